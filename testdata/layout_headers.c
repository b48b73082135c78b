/* Prints, from CPython's own headers, what prof's Layout takes from a 3.13+ interpreter:
 * the `_Py_DebugOffsets` table exactly as the interpreter embeds it, where each field prof
 * decodes sits in that table, and the offsets and sizes the reader uses (by the name of the
 * Layout field they should equal). tests/layout_headers.rs builds it with Py_BUILD_CORE (and
 * Py_GIL_DISABLED for the free-threaded build) against Debian's dev headers, with
 * `fields.h` generated from prof's table description: one `F(section, field)` per field, in
 * prof's order.
 *
 * Output lines:
 *   table <hex bytes of _Py_DebugOffsets>
 *   field <section>.<name> <offset in _Py_DebugOffsets>
 *   reader <Layout field> <value>
 */
#include "Python.h"
#include "internal/pycore_runtime.h"
#if PY_VERSION_HEX < 0x030e0000
#include "internal/pycore_ceval.h" /* Py_DEFAULT_RECURSION_LIMIT, used by the 3.13 init */
#include "internal/pycore_frame.h"
#else
#include "internal/pycore_interpframe_structs.h"
#include "internal/pycore_stackref.h"
#endif
#include "internal/pycore_gil.h"
#include "internal/pycore_interp.h"
#include "internal/pycore_dict.h"
#include "internal/pycore_moduleobject.h"
#include "internal/pycore_object.h"
#include "internal/pycore_runtime_init.h"
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#if PY_VERSION_HEX >= 0x030e0000
static const _Py_DebugOffsets table = _Py_DebugOffsets_INIT("xdebugpy");
#else
/* 3.13 only has the initializer of the whole runtime state; the allocator entries in it
 * name functions this program does not link (the build ignores them: only the table is
 * read). */
static _PyRuntimeState runtime = _PyRuntimeState_INIT(runtime, "xdebugpy");
#define table runtime.debug_offsets
#endif

#define R(name, value) printf("reader %s %llu\n", name, (unsigned long long)(value))

/* Bit position of `state.kind` in PyASCIIObject: set kind alone and find its low bit. */
static unsigned kind_shift(void) {
    PyASCIIObject o;
    uint32_t word;
    unsigned shift = 0;
    memset(&o, 0, sizeof o);
    o.state.kind = 1;
    memcpy(&word, (char *)&o + offsetof(PyASCIIObject, state), sizeof word);
    while (shift < 32 && !(word & (1u << shift)))
        shift++;
    return shift;
}

/* Bit position of `state.compact` relative to `kind` (prof reads kind:3, compact, ascii). */
static unsigned compact_after_kind(void) {
    PyASCIIObject o;
    uint32_t word;
    unsigned shift = 0;
    memset(&o, 0, sizeof o);
    o.state.compact = 1;
    memcpy(&word, (char *)&o + offsetof(PyASCIIObject, state), sizeof word);
    while (shift < 32 && !(word & (1u << shift)))
        shift++;
    return shift - kind_shift();
}

static unsigned ascii_after_kind(void) {
    PyASCIIObject o;
    uint32_t word;
    unsigned shift = 0;
    memset(&o, 0, sizeof o);
    o.state.ascii = 1;
    memcpy(&word, (char *)&o + offsetof(PyASCIIObject, state), sizeof word);
    while (shift < 32 && !(word & (1u << shift)))
        shift++;
    return shift - kind_shift();
}

int main(void) {
    const unsigned char *p = (const unsigned char *)&table;
    printf("table ");
    for (size_t i = 0; i < sizeof table; i++)
        printf("%02x", p[i]);
    printf("\n");

#define F(section, name) \
    printf("field %s.%s %zu\n", #section, #name, offsetof(_Py_DebugOffsets, section.name));
#include "fields.h"
#undef F

    R("free_threaded", _Py_Debug_Free_Threaded);
    R("rt_interp_head", offsetof(_PyRuntimeState, interpreters.head));
    R("is_next", offsetof(PyInterpreterState, next));
    R("is_id", offsetof(PyInterpreterState, id));
    R("is_threads_head", offsetof(PyInterpreterState, threads.head));
    R("is_modules", offsetof(PyInterpreterState, imports.modules));
    R("gil_ceval_gil", offsetof(PyInterpreterState, ceval.gil));
    R("gil_locked", offsetof(struct _gil_runtime_state, locked));
    R("gil_last_holder", offsetof(struct _gil_runtime_state, last_holder));
    R("ts_struct_size", sizeof(PyThreadState));
    R("ts_next", offsetof(PyThreadState, next));
    R("ts_interp", offsetof(PyThreadState, interp));
    R("ts_thread_id", offsetof(PyThreadState, thread_id));
    R("ts_native_thread_id", offsetof(PyThreadState, native_thread_id));
    R("ts_datastack_chunk", offsetof(PyThreadState, datastack_chunk));
    /* The reader takes datastack_top as the word after datastack_chunk. */
    R("ts_datastack_top", offsetof(PyThreadState, datastack_top));
    R("frame_root", offsetof(PyThreadState, current_frame));
    R("f_size", sizeof(_PyInterpreterFrame));
    R("f_back", offsetof(_PyInterpreterFrame, previous));
    R("f_code", offsetof(_PyInterpreterFrame, f_executable));
    R("f_instr", offsetof(_PyInterpreterFrame, instr_ptr));
    R("f_owner", offsetof(_PyInterpreterFrame, owner));
    R("f_localsplus", offsetof(_PyInterpreterFrame, localsplus));
#if PY_VERSION_HEX >= 0x030e0000
    R("f_code_tag_mask", Py_TAG_BITS);
    R("owner_not_python", FRAME_OWNED_BY_INTERPRETER);
#else
    /* 3.13's f_executable is a plain PyObject pointer: no tag bits. */
    R("f_code_tag_mask", 0);
    R("owner_not_python", FRAME_OWNED_BY_CSTACK);
#endif
#if defined(Py_GIL_DISABLED) && PY_VERSION_HEX >= 0x030e0000
    R("f_tlbc_index", offsetof(_PyInterpreterFrame, tlbc_index));
    R("co_tlbc", offsetof(PyCodeObject, co_tlbc));
#endif
    R("co_firstlineno", offsetof(PyCodeObject, co_firstlineno));
    R("co_argcount", offsetof(PyCodeObject, co_argcount));
    R("co_filename", offsetof(PyCodeObject, co_filename));
    R("co_name", offsetof(PyCodeObject, co_name));
    R("co_qualname", offsetof(PyCodeObject, co_qualname));
    R("co_linetable", offsetof(PyCodeObject, co_linetable));
    R("co_varnames", offsetof(PyCodeObject, co_localsplusnames));
    R("co_localspluskinds", offsetof(PyCodeObject, co_localspluskinds));
    R("co_code_adaptive", offsetof(PyCodeObject, co_code_adaptive));
    R("ob_type", offsetof(PyObject, ob_type));
    R("tp_name", offsetof(PyTypeObject, tp_name));
    R("tp_flags", offsetof(PyTypeObject, tp_flags));
    R("tp_dictoffset", offsetof(PyTypeObject, tp_dictoffset));
    R("ht_cached_keys", offsetof(PyHeapTypeObject, ht_cached_keys));
    R("str_length", offsetof(PyASCIIObject, length));
    R("str_state", offsetof(PyASCIIObject, state));
    R("str_kind_shift", kind_shift());
    R("str_compact_after_kind", compact_after_kind());
    R("str_ascii_after_kind", ascii_after_kind());
    R("str_ascii_data", sizeof(PyASCIIObject));
    R("str_compact_data", sizeof(PyCompactUnicodeObject));
    R("var_size", offsetof(PyVarObject, ob_size));
    R("bytes_sval", offsetof(PyBytesObject, ob_sval));
    R("tuple_item", offsetof(PyTupleObject, ob_item));
    R("long_size", offsetof(PyLongObject, long_value.lv_tag));
    R("long_digits", offsetof(PyLongObject, long_value.ob_digit));
    R("float_val", offsetof(PyFloatObject, ob_fval));
    R("dict_keys", offsetof(PyDictObject, ma_keys));
    R("dict_values", offsetof(PyDictObject, ma_values));
    R("module_dict", offsetof(PyModuleObject, md_dict));
    R("object_size", sizeof(PyObject));
    R("tp_basicsize", offsetof(PyTypeObject, tp_basicsize));
    R("dict_keys_log2_index_bytes", offsetof(PyDictKeysObject, dk_log2_index_bytes));
    R("dict_keys_kind", offsetof(PyDictKeysObject, dk_kind));
    R("dict_keys_nentries", offsetof(PyDictKeysObject, dk_nentries));
    R("dict_keys_indices", offsetof(PyDictKeysObject, dk_indices));
    R("dict_values_header", offsetof(PyDictValues, values));
    R("inline_values_valid", offsetof(PyDictValues, valid));
    /* Negative: printed as its two's complement, as the test encodes it. */
    R("managed_dict", MANAGED_DICT_OFFSET);
    return 0;
}

# gdb Python script for tests/native_gdb.rs: after the program stopped at a breakpoint,
# write a JSON description (registers, gdb's frames, mappings) and the raw bytes of the
# stack and the vdso next to OUT (set with `-ex 'python OUT="..."'` before sourcing).
import json
import gdb

gdb.execute("set backtrace past-main on")
gdb.execute("set backtrace past-entry on")
inf = gdb.selected_inferior()
arch = gdb.selected_frame().architecture().name()
aarch64 = "aarch64" in arch
names = ["x%d" % i for i in range(31)] + ["sp", "pc"] if aarch64 else [
    "rax", "rdx", "rcx", "rbx", "rsi", "rdi", "rbp", "rsp",
    "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip"]
top = gdb.newest_frame()
regs = {n: int(top.read_register(n)) & (2**64 - 1) for n in names}

frames = []
f = top
while f is not None and len(frames) < 200:
    sal = f.find_sal()
    frames.append({
        "pc": f.pc(),
        "name": f.name(),
        "type": {gdb.INLINE_FRAME: "inline", gdb.SIGTRAMP_FRAME: "sigtramp",
                 gdb.NORMAL_FRAME: "normal",
                 gdb.TAILCALL_FRAME: "tailcall"}.get(f.type(), "other"),
        "file": sal.symtab.filename if sal.symtab else None,
        "line": sal.line,
    })
    try:
        f = f.older()
    except gdb.error:
        break

maps = []
try:
    text = gdb.execute("info proc mappings", to_string=True)
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[0].startswith("0x"):
            start, end, _size, offset = (int(p, 16) for p in parts[:4])
            perms = parts[4]
            path = " ".join(parts[5:]) or None
            maps.append({"start": start, "end": end, "offset": offset, "perms": perms,
                         "path": path})
except gdb.error:
    pass

def readable_until(addr, limit):
    """Largest end <= limit such that [addr, end) reads page by page."""
    end = addr
    page = 4096
    while end < limit:
        step = min(page - (end % page), limit - end)
        try:
            inf.read_memory(end, step)
        except gdb.MemoryError:
            break
        end += step
    return end

sp = regs["sp" if aarch64 else "rsp"]
start = (sp - 512) & ~15  # a little below sp too: red zone, signal frames' scratch
stack_end = None
for m in maps:
    if m["start"] <= sp < m["end"]:
        stack_end = m["end"]
if stack_end is None:
    stack_end = readable_until(sp, sp + (1 << 20))
with open(OUT + ".stack", "wb") as fh:
    fh.write(bytes(inf.read_memory(start, stack_end - start)))
vdso = None
for m in maps:
    if m["path"] == "[vdso]":
        with open(OUT + ".vdso", "wb") as fh:
            fh.write(bytes(inf.read_memory(m["start"], m["end"] - m["start"])))
        vdso = m["start"]
extra = []
# Code at the interrupted pcs of signal trampolines that lie outside every mapped file
# (qemu-user's sigreturn page), so the test can serve it from memory.
for fr in frames:
    if fr["type"] == "sigtramp":
        try:
            extra.append({"addr": fr["pc"], "bytes": bytes(inf.read_memory(fr["pc"], 16)).hex()})
        except gdb.MemoryError:
            pass
with open(OUT, "w") as fh:
    json.dump({"arch": arch, "regs": regs, "frames": frames, "maps": maps,
               "stack_start": start, "vdso": vdso, "code": extra}, fh, indent=1)

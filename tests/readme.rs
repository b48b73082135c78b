//! What README.md says about the binary holds for the binary that was built.

use std::collections::BTreeSet;

use object::Endianness;
use object::read::elf::ElfFile64;

/// The shared libraries the prof binary names (`DT_NEEDED`), as the loader reads them.
fn needed_libraries() -> BTreeSet<String> {
    let data = std::fs::read(env!("CARGO_BIN_EXE_prof")).expect("read the prof binary");
    let elf = ElfFile64::<Endianness>::parse(&*data).expect("prof is a 64-bit ELF file");
    let table = elf
        .elf_section_table()
        .dynamic_table(elf.endian(), &*data)
        .expect("dynamic section");
    table
        .iter()
        .filter(|d| d.tag == object::elf::DT_NEEDED)
        .map(|d| String::from_utf8_lossy(table.string(d).expect("library name")).into_owned())
        .collect()
}

#[test]
fn install_section_names_every_library_the_binary_needs() {
    let readme = include_str!("../README.md");
    let install = readme
        .split("\n## Install\n")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("README.md has an Install section");
    // Libraries are named in backticks there (`libc.so.6`).
    let named: BTreeSet<String> = install
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|word| word.contains(".so"))
        .map(str::to_owned)
        .collect();
    // The dynamic loader is glibc's own, which the README names as "the loader".
    let needed: BTreeSet<String> = needed_libraries()
        .into_iter()
        .filter(|lib| !lib.starts_with("ld-linux"))
        .collect();
    assert!(!needed.is_empty(), "no DT_NEEDED entries: a static binary?");
    assert_eq!(
        named, needed,
        "README's Install section names these libraries, the binary needs those"
    );
}

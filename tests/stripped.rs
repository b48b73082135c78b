//! Finding `_PyRuntime` without symbols: the scan used for stripped images must land on the
//! same address the symbol gives, on every interpreter (where the symbol exists to check it).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Group, for_each_python};
use prof::process::{LiveMemory, read_maps};
use prof::python::discover::{find_interpreter, scan_for_runtime, writable_data};
use prof::target::{LivePid, Target};

#[test]
fn data_scan_finds_the_runtime_the_symbol_names() {
    crate::skip_without_live_targets!();
    for_each_python(|py| {
        let mut cmd = Command::new(&py.path);
        cmd.args([
            "-c",
            "import threading, time; print('up', flush=True); time.sleep(120)",
        ]);
        let group = Group::spawn(&mut cmd);
        let pid = group.pid();
        let target = LivePid::new(pid);
        let mem = target.memory();
        // The interpreter is up once its main thread state exists; poll until it is found.
        let deadline = Instant::now() + Duration::from_secs(30);
        let interp = loop {
            let maps = read_maps(pid).expect("maps");
            match find_interpreter(&target, &maps) {
                Ok(i) if has_thread(mem, &i) => break i,
                _ if Instant::now() > deadline => panic!("[{}] interpreter never found", py.name),
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        let maps = read_maps(pid).expect("maps");
        let data = writable_data(&maps, &interp.path);
        let scanned = scan_for_runtime(mem, &maps, &data, Some(interp.version()), false);
        assert_eq!(
            scanned,
            Some(interp.runtime),
            "[{}] scan of {} found {:x?}, the symbol says {:#x} ({})",
            py.name,
            interp.path,
            scanned,
            interp.runtime,
            interp.how
        );
        drop(group);
    });
}

fn has_thread(mem: &LiveMemory, i: &prof::python::Interpreter) -> bool {
    use prof::process::MemoryExt;
    let l = &i.layout;
    mem.u64(i.runtime + l.rt_interp_head)
        .and_then(|interp| mem.u64(interp + l.is_threads_head))
        .is_ok_and(|ts| ts != 0)
}

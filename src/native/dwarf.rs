//! DWARF symbolization read on demand: function names (with inlined levels) and lines.
//!
//! Only an index of compilation-unit address ranges stays resident (from `.debug_aranges`,
//! or a unit's own ranges where aranges leave it out). A lookup parses the one unit that
//! covers the address: its DIE tree is walked for the `DW_TAG_subprogram` and nested
//! `DW_TAG_inlined_subroutine`s containing it, and its line program is run for the row
//! covering it; the sections stay in the file mapping, so only the pages a lookup touches
//! are read. A few parsed units (abbreviations, line-program header) are kept in a small
//! cache, and several addresses are looked up in one pass over a unit.
//!
//! The answers follow the `addr2line` crate's conventions: a name is `DW_AT_linkage_name`,
//! else `DW_AT_name`, else that of the DIE `DW_AT_abstract_origin`/`DW_AT_specification`
//! point to (in this unit, another unit, or a dwz supplementary file); the innermost level
//! is located by the last line row at or below the address in the sequence covering it,
//! each outer level at the call site its inner level records.

use std::sync::Arc;

use gimli::{AttributeValue, DwLang, EndianReader, LittleEndian, Reader as _, UnitOffset};

use super::modules::SharedBytes;

/// How prof reads DWARF sections: straight from the file mapping (or a decompressed copy).
pub type Reader = EndianReader<LittleEndian, SharedBytes>;

type Unit = gimli::Unit<Reader>;

/// Parsed units kept for later lookups (a unit is its abbreviations and line header): the
/// one a lookup is in and one its names refer to (another unit, or a dwz file's). More pay
/// little: a target running new code spreads its new pcs over many units (bench/churn.py:
/// 131 of them in 75 s, each ~60 KB parsed, for CPython's), where a cache of 6 per module
/// was hit by ~1% of the lookups while holding ~0.7 MB, and one of 48 would still have
/// missed a third of them.
const UNIT_CACHE: usize = 2;
/// Bound on the `DW_AT_abstract_origin`/`DW_AT_specification` links followed for a name.
const NAME_DEPTH: usize = 16;

/// One address range of a compilation unit.
#[derive(Debug, Clone, Copy)]
struct UnitRange {
    begin: u64,
    end: u64,
    /// Offset of the unit's header in `.debug_info`.
    unit: u64,
}

/// One level of what is at an address, before names are demangled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DwarfFrame {
    /// Raw (mangled) name.
    pub name: Option<String>,
    /// The unit's language, for demangling.
    pub language: Option<DwLang>,
    /// Source file.
    pub file: Option<String>,
    /// Source line.
    pub line: Option<u32>,
}

/// What a function or inlined-call DIE says about itself.
#[derive(Debug, Clone, Default)]
struct Die {
    ranges: Vec<(u64, u64)>,
    linkage_name: Option<AttributeValue<Reader>>,
    name: Option<AttributeValue<Reader>>,
    origin: Option<AttributeValue<Reader>>,
    call_file: Option<u64>,
    call_line: u32,
}

impl Die {
    fn contains(&self, probe: u64) -> bool {
        self.ranges.iter().any(|&(b, e)| b <= probe && probe < e)
    }
}

/// Where the walk of a unit is for one probe.
#[derive(Default)]
struct ProbeWalk {
    /// The function containing the probe and its DIE depth.
    func: Option<(isize, Die)>,
    /// Inlined calls containing the probe, outermost first, with their DIE depths.
    inlined: Vec<(isize, Die)>,
    /// Inside a nested function's subtree below this depth: its inlined calls are its own.
    nested: Option<isize>,
    /// The function's subtree has ended.
    done: bool,
}

/// The DWARF of one image, read on demand.
pub struct LazyDwarf {
    dwarf: gimli::Dwarf<Reader>,
    /// Unit ranges sorted by start.
    ranges: Vec<UnitRange>,
    /// The longest range: how far back a lookup scans.
    max_len: u64,
    /// Header offsets of every unit, sorted (to resolve references into other units);
    /// listed on first need.
    units: Option<Vec<u64>>,
    /// The same for the supplementary file.
    sup_units: Option<Vec<u64>>,
    /// Recently parsed units, most recent last: (in the supplementary file, offset, unit).
    cache: Vec<(bool, u64, Arc<Unit>)>,
    /// The section bytes behind `dwarf`, whose pages are released after each lookup.
    sections: Vec<SharedBytes>,
}

/// Header offsets of the units of `dwarf`. Each header read faults in its page (and the
/// kernel maps more around it): the pages of `sections` are let go as the walk proceeds,
/// so that it never holds more than a few.
fn unit_offsets(dwarf: &gimli::Dwarf<Reader>, sections: &[SharedBytes]) -> Vec<u64> {
    let mut out = Vec::new();
    let mut headers = dwarf.units();
    while let Ok(Some(h)) = headers.next() {
        if let Some(off) = h.debug_info_offset() {
            out.push(off.0 as u64);
            if out.len() % 16 == 0 {
                sections.iter().for_each(SharedBytes::release);
            }
        }
    }
    out
}

impl LazyDwarf {
    /// Index the units of `dwarf` (whose `sup` is already loaded, if any); `sections` are
    /// the bytes it reads.
    pub fn new(dwarf: gimli::Dwarf<Reader>, sections: Vec<SharedBytes>) -> LazyDwarf {
        let mut ranges = Vec::new();
        let mut headers = dwarf.debug_aranges.headers();
        while let Ok(Some(h)) = headers.next() {
            let unit = h.debug_info_offset().0 as u64;
            let mut entries = h.entries();
            while let Ok(Some(e)) = entries.next() {
                let r = e.range();
                if r.end > r.begin {
                    ranges.push(UnitRange {
                        begin: r.begin,
                        end: r.end,
                        unit,
                    });
                }
            }
        }
        // .debug_aranges, when there is one, is taken as the index (compilers emit one set
        // per unit); without it, every unit's own ranges, from parses dropped right away.
        let mut units = None;
        if ranges.is_empty() {
            let mut headers = dwarf.units();
            let mut list = Vec::new();
            while let Ok(Some(h)) = headers.next() {
                let Some(off) = h.debug_info_offset() else {
                    continue;
                };
                let off = off.0 as u64;
                list.push(off);
                if list.len() % 16 == 0 {
                    sections.iter().for_each(SharedBytes::release);
                }
                let code = matches!(
                    h.type_(),
                    gimli::UnitType::Compilation | gimli::UnitType::Skeleton(_)
                );
                if !code {
                    continue;
                }
                let Ok(unit) = dwarf.unit(h) else { continue };
                if let Ok(mut it) = dwarf.unit_ranges(&unit) {
                    while let Ok(Some(r)) = it.next() {
                        if r.end > r.begin {
                            ranges.push(UnitRange {
                                begin: r.begin,
                                end: r.end,
                                unit: off,
                            });
                        }
                    }
                }
            }
            units = Some(list);
        }
        ranges.sort_unstable_by_key(|r| (r.begin, r.end));
        ranges.shrink_to_fit();
        let max_len = ranges.iter().map(|r| r.end - r.begin).max().unwrap_or(0);
        let d = LazyDwarf {
            dwarf,
            ranges,
            max_len,
            units,
            sup_units: None,
            cache: Vec::new(),
            sections,
        };
        d.release();
        d
    }

    /// Let the pages the last lookup read go (see [`ElfBytes::release`]).
    ///
    /// [`ElfBytes::release`]: super::modules::ElfBytes::release
    fn release(&self) {
        self.sections.iter().for_each(SharedBytes::release);
    }

    /// Does any unit cover an address?
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Units whose ranges contain `probe`, nearest start first.
    fn candidates(&self, probe: u64) -> Vec<u64> {
        let i = self.ranges.partition_point(|r| r.begin <= probe);
        let mut out: Vec<u64> = Vec::new();
        for r in self.ranges[..i].iter().rev() {
            if probe - r.begin >= self.max_len {
                break;
            }
            if probe < r.end && !out.contains(&r.unit) {
                out.push(r.unit);
            }
        }
        out
    }

    /// The unit whose header is at `offset` (in the supplementary file if `sup`).
    fn unit(&mut self, sup: bool, offset: u64) -> Option<Arc<Unit>> {
        if let Some(i) = self
            .cache
            .iter()
            .position(|(s, o, _)| *s == sup && *o == offset)
        {
            let hit = self.cache.remove(i);
            let unit = hit.2.clone();
            self.cache.push(hit);
            return Some(unit);
        }
        let dwarf = if sup { self.dwarf.sup()? } else { &self.dwarf };
        let off = gimli::DebugInfoOffset(usize::try_from(offset).ok()?);
        let header = dwarf.debug_info.header_from_offset(off).ok()?;
        let unit = Arc::new(dwarf.unit(header).ok()?);
        if self.cache.len() >= UNIT_CACHE {
            self.cache.remove(0);
        }
        self.cache.push((sup, offset, unit.clone()));
        Some(unit)
    }

    /// Frames for each of `probes` (link-time addresses), innermost first; empty where
    /// the DWARF knows nothing of the address.
    pub fn find_frames(&mut self, probes: &[u64]) -> Vec<Vec<DwarfFrame>> {
        let mut out: Vec<Vec<DwarfFrame>> = vec![Vec::new(); probes.len()];
        let mut todo: Vec<(usize, Vec<u64>)> = probes
            .iter()
            .enumerate()
            .map(|(i, &p)| (i, self.candidates(p)))
            .collect();
        // Each round looks every pending probe up in its next candidate unit, one pass
        // per unit; a probe that unit knows nothing of moves on to its next candidate.
        loop {
            todo.retain(|(_, c)| !c.is_empty());
            if todo.is_empty() {
                break;
            }
            let unit = todo[0].1[0];
            let group: Vec<usize> = (0..todo.len()).filter(|&k| todo[k].1[0] == unit).collect();
            let ps: Vec<u64> = group.iter().map(|&k| probes[todo[k].0]).collect();
            let found = self.frames_in_unit(unit, &ps);
            for (&k, frames) in group.iter().zip(found) {
                if frames.is_empty() {
                    todo[k].1.remove(0);
                } else {
                    out[todo[k].0] = frames;
                    todo[k].1.clear();
                }
            }
        }
        self.release();
        out
    }

    fn frames_in_unit(&mut self, offset: u64, probes: &[u64]) -> Vec<Vec<DwarfFrame>> {
        let none = || vec![Vec::new(); probes.len()];
        let Some(unit) = self.unit(false, offset) else {
            return none();
        };
        let Ok((language, walks)) = walk(&self.dwarf, &unit, probes, &self.sections) else {
            return none();
        };
        let rows = line_rows(&unit, probes);
        let mut out = Vec::with_capacity(probes.len());
        for (walk, row) in walks.into_iter().zip(rows) {
            let location = row.map(|(file, line)| (self.file_name(&unit, file), line));
            let Some((_, func)) = walk.func else {
                // No function: the line alone, if the unit has one.
                out.push(match location {
                    Some((file, line)) => vec![DwarfFrame {
                        name: None,
                        language,
                        file,
                        line,
                    }],
                    None => Vec::new(),
                });
                continue;
            };
            let mut frames = Vec::with_capacity(walk.inlined.len() + 1);
            let (mut file, mut line) = location.unwrap_or((None, None));
            for (_, inl) in walk.inlined.iter().rev() {
                frames.push(DwarfFrame {
                    name: self.name(false, &unit, inl, NAME_DEPTH),
                    language,
                    file: file.take(),
                    line,
                });
                file = inl.call_file.and_then(|f| self.file_name(&unit, f));
                line = (inl.call_line != 0).then_some(inl.call_line);
            }
            frames.push(DwarfFrame {
                name: self.name(false, &unit, &func, NAME_DEPTH),
                language,
                file,
                line,
            });
            out.push(frames);
        }
        out
    }

    /// The name of a DIE: its own, or through the DIE it is an instance of.
    fn name(&mut self, sup: bool, unit: &Unit, die: &Die, depth: usize) -> Option<String> {
        let dwarf = if sup { self.dwarf.sup()? } else { &self.dwarf };
        for attr in [&die.linkage_name, &die.name].into_iter().flatten() {
            if let Ok(s) = dwarf.attr_string(unit, attr.clone()) {
                return Some(s.to_string_lossy().ok()?.into_owned());
            }
        }
        if depth == 0 {
            return None;
        }
        match die.origin.clone()? {
            AttributeValue::UnitRef(at) => {
                let target = read_die_at(unit, at)?;
                self.name(sup, unit, &target, depth - 1)
            }
            AttributeValue::DebugInfoRef(at) => {
                let (u, o) = self.resolve(sup, at.0 as u64)?;
                let target = read_die_at(&u, o)?;
                self.name(sup, &u, &target, depth - 1)
            }
            AttributeValue::DebugInfoRefSup(at) => {
                let (u, o) = self.resolve(true, at.0 as u64)?;
                let target = read_die_at(&u, o)?;
                self.name(true, &u, &target, depth - 1)
            }
            _ => None,
        }
    }

    /// The unit holding `.debug_info` offset `at` and the offset within it.
    fn resolve(&mut self, sup: bool, at: u64) -> Option<(Arc<Unit>, UnitOffset<usize>)> {
        let (dwarf, sections) = (&self.dwarf, &self.sections);
        let list = if sup {
            self.sup_units.get_or_insert_with(|| {
                dwarf
                    .sup()
                    .map(|d| unit_offsets(d, sections))
                    .unwrap_or_default()
            })
        } else {
            self.units
                .get_or_insert_with(|| unit_offsets(dwarf, sections))
        };
        let i = list.partition_point(|&u| u <= at).checked_sub(1)?;
        let start = list[i];
        let unit = self.unit(sup, start)?;
        let within =
            gimli::DebugInfoOffset(usize::try_from(at).ok()?).to_unit_offset(&unit.header)?;
        Some((unit, within))
    }

    /// File `index` of the unit's line program, as a path.
    fn file_name(&self, unit: &Unit, index: u64) -> Option<String> {
        let header = unit.line_program.as_ref()?.header();
        let file = header.file(index)?;
        let text = |v: AttributeValue<Reader>| -> Option<String> {
            let r = self.dwarf.attr_string(unit, v).ok()?;
            Some(r.to_string_lossy().ok()?.into_owned())
        };
        let mut path = match &unit.comp_dir {
            Some(d) => d.to_string_lossy().ok()?.into_owned(),
            None => String::new(),
        };
        // Directory 0 is the compilation directory itself.
        if file.directory_index() != 0
            && let Some(dir) = file.directory(header)
        {
            push_path(&mut path, &text(dir)?);
        }
        push_path(&mut path, &text(file.path_name())?);
        Some(path)
    }
}

/// Append `part` to `path`, or replace it when `part` is absolute.
fn push_path(path: &mut String, part: &str) {
    if part.starts_with('/') {
        *path = part.to_string();
        return;
    }
    if !path.is_empty() && !path.ends_with('/') {
        path.push('/');
    }
    path.push_str(part);
}

/// The naming attributes of the DIE at `at` (no ranges: only its name is wanted).
fn read_die_at(unit: &Unit, at: UnitOffset<usize>) -> Option<Die> {
    let mut entries = unit.entries_raw(Some(at)).ok()?;
    let abbrev = entries.read_abbreviation().ok()??;
    let mut die = Die::default();
    for spec in abbrev.attributes() {
        let attr = entries.read_attribute(*spec).ok()?;
        match attr.name() {
            gimli::DW_AT_linkage_name | gimli::DW_AT_MIPS_linkage_name => {
                die.linkage_name = Some(attr.value())
            }
            gimli::DW_AT_name => die.name = Some(attr.value()),
            gimli::DW_AT_abstract_origin | gimli::DW_AT_specification => {
                die.origin = Some(attr.value())
            }
            _ => {}
        }
    }
    Some(die)
}

/// Read the attributes of a function or inlined-call DIE the lookup needs.
fn read_die(
    dwarf: &gimli::Dwarf<Reader>,
    unit: &Unit,
    entries: &mut gimli::EntriesRaw<'_, Reader>,
    abbrev: &gimli::Abbreviation,
) -> gimli::Result<Die> {
    let mut die = Die::default();
    let (mut low, mut high, mut size, mut ranges) = (None, None, None, None);
    for spec in abbrev.attributes() {
        let attr = entries.read_attribute(*spec)?;
        match attr.name() {
            gimli::DW_AT_low_pc => match attr.value() {
                AttributeValue::Addr(a) => low = Some(a),
                AttributeValue::DebugAddrIndex(i) => low = Some(dwarf.address(unit, i)?),
                _ => {}
            },
            gimli::DW_AT_high_pc => match attr.value() {
                AttributeValue::Addr(a) => high = Some(a),
                AttributeValue::DebugAddrIndex(i) => high = Some(dwarf.address(unit, i)?),
                AttributeValue::Udata(n) => size = Some(n),
                _ => {}
            },
            gimli::DW_AT_ranges => ranges = dwarf.attr_ranges_offset(unit, attr.value())?,
            gimli::DW_AT_linkage_name | gimli::DW_AT_MIPS_linkage_name => {
                die.linkage_name = Some(attr.value())
            }
            gimli::DW_AT_name => die.name = Some(attr.value()),
            gimli::DW_AT_abstract_origin | gimli::DW_AT_specification => {
                die.origin = Some(attr.value())
            }
            gimli::DW_AT_call_file => {
                // DWARF 5 numbers files from 0; before, 0 meant none.
                if let AttributeValue::FileIndex(f) = attr.value()
                    && (f > 0 || unit.header.version() >= 5)
                {
                    die.call_file = Some(f);
                }
            }
            gimli::DW_AT_call_line => die.call_line = attr.udata_value().unwrap_or(0) as u32,
            _ => {}
        }
    }
    if let Some(off) = ranges {
        let mut it = dwarf.ranges(unit, off)?;
        while let Some(r) = it.next()? {
            if r.end > r.begin {
                die.ranges.push((r.begin, r.end));
            }
        }
    } else if let Some(low) = low {
        let end = match (high, size) {
            (Some(h), _) => h,
            (None, Some(n)) => low.wrapping_add(n),
            _ => low,
        };
        if end > low {
            die.ranges.push((low, end));
        }
    }
    Ok(die)
}

/// DIEs read between two releases of the pages a walk has read.
const DIES_PER_RELEASE: usize = 4096;

/// One pass over a unit's DIEs: for each probe, the function containing it and the
/// inlined calls containing it inside that function; plus the unit's language. The pages
/// of `sections` are let go as the walk proceeds: a large unit (CPython's eval loop) is
/// megabytes of DIEs, which would otherwise all be resident at the end of the walk.
fn walk(
    dwarf: &gimli::Dwarf<Reader>,
    unit: &Unit,
    probes: &[u64],
    sections: &[SharedBytes],
) -> gimli::Result<(Option<DwLang>, Vec<ProbeWalk>)> {
    let mut walks: Vec<ProbeWalk> = probes.iter().map(|_| ProbeWalk::default()).collect();
    let mut language = None;
    let mut entries = unit.entries_raw(None)?;
    let mut root = true;
    let mut read = 0;
    while !entries.is_empty() {
        read += 1;
        if read % DIES_PER_RELEASE == 0 {
            sections.iter().for_each(SharedBytes::release);
        }
        let depth = entries.next_depth();
        let Some(abbrev) = entries.read_abbreviation()? else {
            continue;
        };
        for w in walks.iter_mut() {
            if w.done {
                continue;
            }
            if let Some((fd, _)) = &w.func
                && depth <= *fd
            {
                // The function's subtree ended: what was found stands.
                w.done = true;
                continue;
            }
            if w.nested.is_some_and(|n| depth <= n) {
                w.nested = None;
            }
            while w.inlined.last().is_some_and(|(d, _)| *d >= depth) {
                w.inlined.pop();
            }
        }
        if walks.iter().all(|w| w.done) {
            break;
        }
        match abbrev.tag() {
            gimli::DW_TAG_subprogram => {
                let die = read_die(dwarf, unit, &mut entries, abbrev)?;
                for (w, &p) in walks.iter_mut().zip(probes) {
                    if w.done {
                        continue;
                    }
                    if w.func.is_none() {
                        if die.contains(p) {
                            w.func = Some((depth, die.clone()));
                        }
                    } else if w.nested.is_none() {
                        w.nested = Some(depth);
                    }
                }
            }
            gimli::DW_TAG_inlined_subroutine => {
                let die = read_die(dwarf, unit, &mut entries, abbrev)?;
                for (w, &p) in walks.iter_mut().zip(probes) {
                    if !w.done && w.func.is_some() && w.nested.is_none() && die.contains(p) {
                        w.inlined.push((depth, die.clone()));
                    }
                }
            }
            _ if root => {
                for spec in abbrev.attributes() {
                    let attr = entries.read_attribute(*spec)?;
                    if let (gimli::DW_AT_language, AttributeValue::Language(l)) =
                        (attr.name(), attr.value())
                    {
                        language = Some(l);
                    }
                }
            }
            _ => entries.skip_attributes(abbrev.attributes())?,
        }
        root = false;
    }
    Ok((language, walks))
}

/// One run of the unit's line program: for each probe, (file index, line) of the last row
/// at or below it in the sequence that covers it.
fn line_rows(unit: &Unit, probes: &[u64]) -> Vec<Option<(u64, Option<u32>)>> {
    let mut found: Vec<Option<(u64, Option<u32>)>> = vec![None; probes.len()];
    let Some(program) = unit.line_program.clone() else {
        return found;
    };
    let mut current: Vec<Option<(u64, Option<u32>)>> = vec![None; probes.len()];
    let mut start: Option<u64> = None;
    let mut rows = program.rows();
    while let Ok(Some((_, row))) = rows.next_row() {
        let addr = row.address();
        if row.end_sequence() {
            if let Some(s) = start {
                for (i, &p) in probes.iter().enumerate() {
                    if found[i].is_none() && s <= p && p < addr {
                        found[i] = current[i];
                    }
                }
            }
            current.iter_mut().for_each(|c| *c = None);
            start = None;
            continue;
        }
        start.get_or_insert(addr);
        let line = row.line().map(|l| l.get().min(u64::from(u32::MAX)) as u32);
        for (c, &p) in current.iter_mut().zip(probes) {
            if addr <= p {
                *c = Some((row.file_index(), line));
            }
        }
    }
    found
}

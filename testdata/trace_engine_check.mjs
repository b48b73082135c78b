// Load a Chrome trace with the trace engine of Chrome DevTools' performance panel
// (npm package @paulirish/trace_engine) and print, as one JSON object, what it made of it:
//
//   {"mismatches": N,          Begin/End pairs the engine could not match
//    "errors": [...],          everything else it complained about on the console
//    "threads": [{"pid", "tid", "slices": [{"name", "ts", "dur", "depth", "parent"}]}]}
//
// usage: node trace_engine_check.mjs TRACE.json ENGINE_DIR
// where ENGINE_DIR is the package's directory (…/node_modules/@paulirish/trace_engine).
// tests/formats.rs runs it; the checks are made there.

import fs from 'node:fs';
import path from 'node:path';
import {pathToFileURL} from 'node:url';

const [tracePath, engineDir] = process.argv.slice(2);
if (!tracePath || !engineDir) {
  console.error('usage: node trace_engine_check.mjs TRACE.json ENGINE_DIR');
  process.exit(2);
}

// The engine reports what it cannot pair on the console and carries on.
let mismatches = 0;
const errors = [];
for (const level of ['error', 'warn']) {
  console[level] = (...args) => {
    const text = args.map(String).join(' ');
    if (text.startsWith('Begin/End events mismatch')) {
      mismatches += 1;
    } else {
      errors.push(text);
    }
  };
}

// The package's own entry point for Node, which also provides the DOMRect it expects.
const {analyzeEvents} = await import(pathToFileURL(path.join(engineDir, 'analyze-trace.mjs')));
const trace = JSON.parse(fs.readFileSync(tracePath, 'utf8'));
const {parsedTrace} = await analyzeEvents(trace.traceEvents ?? trace);

const threads = [];
for (const [pid, proc] of parsedTrace.data.Renderer.processes) {
  for (const [tid, thread] of proc.threads) {
    const slices = [];
    const walk = (node, parent) => {
      slices.push({
        name: node.entry.name,
        ts: node.entry.ts,
        dur: node.entry.dur ?? 0,
        depth: node.depth,
        parent,
      });
      for (const child of node.children) {
        walk(child, node.entry.name);
      }
    };
    for (const root of thread.tree?.roots ?? []) {
      walk(root, null);
    }
    threads.push({pid, tid, slices});
  }
}
process.stdout.write(JSON.stringify({mismatches, errors, threads}) + '\n');

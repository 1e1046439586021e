// Builds the package's wasm and its JS glue into dist/:
//   1. crates/wasm for wasm32 with Debian's Rust 1.85 (DESIGN.md, "Browser
//      build": apt-get install rustc-web cargo-web rust-web-src lld);
//   2. wasm-bindgen (cargo install wasm-bindgen-cli --locked --version
//      0.2.108, the version crates/wasm pins) for ES-module glue.
// `npm run build` runs it; tests/browser.rs runs it too. Nothing is
// installed globally: the tools are looked up and named when missing.
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, statSync } from "node:fs";
import { homedir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const pkg = resolve(here, "..");
const root = resolve(pkg, "..", "..");
const target = process.env.PLURESDB_WASM_TARGET_DIR ?? join(root, "target", "wasm32-check");
const dist = join(pkg, "dist");

function fail(message) {
  console.error(`pluresdb build: ${message}`);
  process.exit(1);
}

function run(command, args, env) {
  const result = spawnSync(command, args, { cwd: root, env, stdio: "inherit" });
  if (result.error) fail(`cannot run ${command}: ${result.error.message}`);
  if (result.status !== 0) fail(`${command} ${args.join(" ")} exited with ${result.status}`);
}

if (!existsSync("/usr/lib/rustlib/src/rust/library/Cargo.lock") || !existsSync("/usr/bin/wasm-ld")) {
  fail("the wasm toolchain is missing: apt-get install rustc-web cargo-web rust-web-src lld");
}
const candidates = [process.env.WASM_BINDGEN, join(homedir(), ".cargo", "bin", "wasm-bindgen"), "/usr/local/bin/wasm-bindgen"];
const wasmBindgen = candidates.find((path) => path && existsSync(path));
if (!wasmBindgen) fail("wasm-bindgen is missing: cargo install wasm-bindgen-cli --locked --version 0.2.108");

const env = { ...process.env, RUSTC: "/usr/bin/rustc", RUSTC_BOOTSTRAP: "1", RUSTFLAGS: "-C linker=wasm-ld", CARGO_TARGET_DIR: target };
delete env.RUSTUP_TOOLCHAIN;
// The dev profile: the workspace builds dependencies (std too) at
// opt-level 2 in it, and tests/wasm_portability.rs has already built them
// in the same target directory, so this adds only the crate itself.
run("/usr/bin/cargo", [
  "build", "--target", "wasm32-unknown-unknown", "-Zbuild-std=std,panic_abort", "-p", "pluresdb-wasm",
], env);

const wasm = join(target, "wasm32-unknown-unknown", "debug", "pluresdb_wasm.wasm");
mkdirSync(dist, { recursive: true });
run(wasmBindgen, ["--target", "web", "--out-dir", dist, "--out-name", "pluresdb_wasm", wasm], process.env);
console.log(`pluresdb build: ${join(dist, "pluresdb_wasm_bg.wasm")} (${statSync(join(dist, "pluresdb_wasm_bg.wasm")).size} bytes)`);

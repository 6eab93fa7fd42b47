//! Bundles the web pages' scripts into `OUT_DIR/ui`, where `src/serve` embeds them: the
//! station serves every asset from its binary (a plant network has no CDN).
//!
//! The scripts are TypeScript in `ui/src`, one entry per page, bundled by esbuild with the
//! libraries they import from npm (uPlot) and the stylesheets those bring. esbuild does not
//! type-check; `make ui-check` runs tsc, and `make test` and `make lint` run it. Both tools
//! come from `ui/node_modules`, which `make setup` installs with `npm ci` from the committed
//! lock file.

use std::path::{Path, PathBuf};
use std::process::{Command, exit};

/// One script per page, served as `/assets/<page>.js`.
const PAGES: [&str; 5] = ["live", "label", "models", "mes", "whatif"];

fn main() {
    println!("cargo:rerun-if-changed=ui/src");
    println!("cargo:rerun-if-changed=ui/tsconfig.json");
    println!("cargo:rerun-if-changed=ui/package.json");
    println!("cargo:rerun-if-changed=ui/package-lock.json");
    println!("cargo:rerun-if-changed=ui/node_modules/.package-lock.json");
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from);
    let out = std::env::var_os("OUT_DIR").map(PathBuf::from);
    let (Some(manifest), Some(out)) = (manifest, out) else {
        fail("cargo did not set CARGO_MANIFEST_DIR and OUT_DIR");
    };
    let ui = manifest.join("ui");
    let esbuild = ui.join("node_modules/.bin/esbuild");
    if !esbuild.exists() {
        fail(&format!(
            "{} is missing: the web pages cannot be bundled. Run `make setup` \
             (or `npm ci` in ui/) first.",
            esbuild.display()
        ));
    }
    let out = out.join("ui");
    let status = Command::new(&esbuild)
        .current_dir(&ui)
        .args(PAGES.iter().map(|page| format!("src/{page}.ts")))
        .args([
            "--bundle",
            "--format=iife",
            "--target=es2022",
            "--log-level=warning",
            "--charset=utf8",
        ])
        .arg(format!("--outdir={}", out.display()))
        .status();
    match status {
        Ok(status) if status.success() => {}
        Ok(status) => fail(&format!("esbuild failed ({status}) on ui/src; see above")),
        Err(error) => fail(&format!("{}: {error}", esbuild.display())),
    }
    for page in PAGES {
        expect(&out.join(format!("{page}.js")));
    }
    // uPlot's stylesheet, imported by the MES page's script.
    expect(&out.join("mes.css"));
}

fn expect(path: &Path) {
    if !path.exists() {
        fail(&format!("esbuild wrote no {}", path.display()));
    }
}

fn fail(message: &str) -> ! {
    eprintln!("linesight build: {message}");
    exit(1);
}

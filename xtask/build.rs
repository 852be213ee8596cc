//! Embeds Python: records where libpython lives (rpath) so the xtask runs without
//! LD_LIBRARY_PATH, and which interpreter it was built against, so that the venv it creates
//! matches the embedded Python's version.
fn main() {
    pyo3_build_config::add_libpython_rpath_link_args();
    let config = pyo3_build_config::get();
    if let Some(executable) = config.executable() {
        println!("cargo:rustc-env=XTASK_PYTHON={executable}");
    }
    println!("cargo:rerun-if-env-changed=PYO3_PYTHON");
}

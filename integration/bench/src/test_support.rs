//! What the crate's test modules share: the privileged-test gate. Test-only;
//! owns nothing at run time.

/// Privileged: true as root; otherwise skips (false) with a message naming
/// what the test needs, or fails when `CI=true`, where nothing may skip.
pub fn privileged(needs: &str) -> bool {
    if weir_integration::is_root() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "this test needs root ({needs}) and CI=true is set"
    );
    eprintln!("skipping: needs root ({needs})");
    false
}

//! `factory config check` and `factory config example`: a configuration file read and resolved
//! exactly as `factory up` would, without starting anything.

use std::path::Path;

/// Prints the resolved configuration, or fails naming every bad key.
pub fn check(file: &Path) -> anyhow::Result<()> {
    let config = factory_config::Config::check_file(file)?;
    println!("{} is valid", file.display());
    println!("{config:#?}");
    Ok(())
}

/// Prints an example configuration with every key and its default.
pub fn example() {
    print!("{}", factory_config::Config::example_toml());
}

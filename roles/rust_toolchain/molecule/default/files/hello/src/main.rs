// std only: builds offline. `edition = "2024"` in Cargo.toml needs Rust >= 1.85.
fn main() {
    let answer: u32 = [21u32, 2].iter().product();
    println!("hello from edition {}, 21 * 2 = {answer}", 2024);
}

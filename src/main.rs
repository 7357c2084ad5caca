fn main() {
    println!("corecast");
}

fn main() {
    println!("corecast-loadgen");
}

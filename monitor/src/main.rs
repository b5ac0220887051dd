fn main() {
    println!("twmon: under construction");
}

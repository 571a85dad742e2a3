fn main() {
    moat::shim::main();
}

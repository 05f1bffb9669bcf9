mod common;
use common::*;

#[test]
fn smoke() {
    if skip() {
        return;
    }
    let s = Swarm::start(1, 1);
    println!("{}", s.ctl(1, &["node", "ls"]));
    println!("{}", s.logs());
}

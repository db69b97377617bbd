//! A Rust method in a module, with a call that inlines into it: its frames must read
//! `demangle_rs::geometry::Shape::area_loop`, demangled, with the inlined `wrapping_*`
//! calls as frames of their own above it.
mod geometry {
    pub struct Shape;

    impl Shape {
        #[inline(never)]
        pub fn area_loop(n: u64) -> u64 {
            let mut x = 1u64;
            for i in 0..n {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                if i & 0xfffff == 0 {
                    x = std::hint::black_box(x);
                }
            }
            x
        }
    }
}

fn main() {
    let x = geometry::Shape::area_loop(std::hint::black_box(300_000_000));
    std::hint::black_box(x);
}

//! Allocation-free decimal formatting of header values (`u64` → ASCII), so
//! the response path writes from a stack buffer instead of a `format!`ed
//! `String`.

/// Longest decimal `u64` (18446744073709551615).
const MAX_DIGITS: usize = 20;

/// A `u64` rendered as ASCII digits in a stack buffer.
#[derive(Clone, Copy)]
pub struct Decimal {
    buf: [u8; MAX_DIGITS],
    start: u8,
}

impl Decimal {
    /// Renders `n`.
    pub fn new(mut n: u64) -> Self {
        let mut buf = [0u8; MAX_DIGITS];
        let mut i = MAX_DIGITS;
        loop {
            i -= 1;
            buf[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        Decimal {
            buf,
            start: i as u8,
        }
    }

    /// The digits, most significant first.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[usize::from(self.start)..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_like_display() {
        for n in [
            0,
            1,
            9,
            10,
            99,
            100,
            12_345,
            u64::from(u32::MAX),
            u64::MAX / 10,
            u64::MAX - 1,
            u64::MAX,
        ] {
            assert_eq!(Decimal::new(n).as_bytes(), n.to_string().as_bytes(), "{n}");
        }
    }
}

//! The (protocol, port) part of a `POLICY` key as blocks of a 24-bit space:
//! 8 bits of protocol, then 16 bits of destination port (big-endian, as in
//! the key), of which the first `len` bits are fixed.
//!
//! A block is exactly what one LPM-trie entry covers below (endpoint,
//! identity, direction): `len` 0 is any protocol (prefix 72), 8 one protocol
//! (80), 24 one port (96), and 8 + k an aligned power-of-two port block.

use weir_common::{PolicyKey, policy_prefix};

/// Bits in the (protocol, port) space.
pub(crate) const BITS: u8 = 24;

fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        (0x00FF_FFFF_u32 << (BITS - len)) & 0x00FF_FFFF
    }
}

/// An aligned block of the (protocol, port) space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Block {
    /// Protocol in bits 23..16, port in bits 15..0; bits past `len` are zero.
    pub bits: u32,
    pub len: u8,
}

impl Block {
    /// Any protocol, any port.
    pub const ALL: Block = Block { bits: 0, len: 0 };

    /// Every port of one protocol.
    pub fn protocol(proto: u8) -> Self {
        Block {
            bits: u32::from(proto) << 16,
            len: 8,
        }
    }

    /// One port of one protocol.
    pub fn port(proto: u8, port: u16) -> Self {
        Block {
            bits: (u32::from(proto) << 16) | u32::from(port),
            len: BITS,
        }
    }

    /// The inclusive port range `lo..=hi` of a protocol as the fewest aligned
    /// blocks, in ascending order.
    pub fn range(proto: u8, lo: u16, hi: u16) -> Vec<Block> {
        let mut out = Vec::new();
        let (mut lo, hi) = (u32::from(lo), u32::from(hi));
        while lo <= hi {
            // Largest power of two that lo is aligned to and that fits.
            let mut size: u32 = 1 << lo.trailing_zeros().min(16);
            while lo + size - 1 > hi {
                size >>= 1;
            }
            let len = BITS - size.trailing_zeros() as u8;
            out.push(Block {
                bits: (u32::from(proto) << 16) | lo,
                len,
            });
            lo += size;
        }
        out
    }

    /// Whether `other` lies inside (or is) this block.
    pub fn contains(&self, other: &Block) -> bool {
        self.len <= other.len && (other.bits & mask(self.len)) == self.bits
    }

    /// Whether the point (protocol, port) is inside.
    pub fn contains_point(&self, proto: u8, port: u16) -> bool {
        self.contains(&Block::port(proto, port))
    }

    /// The blocks strictly containing this one, widest first.
    pub fn ancestors(self) -> impl Iterator<Item = Block> {
        (0..self.len).map(move |len| Block {
            bits: self.bits & mask(len),
            len,
        })
    }

    /// The trie prefix length of the entry for this block.
    pub fn prefix_len(&self) -> u32 {
        policy_prefix::ANY_PROTO + u32::from(self.len)
    }

    /// The `POLICY` key of this block (bits past the prefix are zero).
    pub fn key(&self, endpoint: u32, identity: u32, direction: u8) -> PolicyKey {
        PolicyKey {
            endpoint,
            identity,
            direction,
            proto: (self.bits >> 16) as u8,
            port: (self.bits as u16).to_be_bytes(),
        }
    }

    /// Number of ports of its protocol this block covers (65536 for a whole
    /// protocol, 0 meaning "every protocol" for [`Block::ALL`]).
    #[cfg(test)]
    pub fn size(&self) -> u32 {
        if self.len < 8 {
            0
        } else {
            1 << (BITS - self.len)
        }
    }
}

/// Zeroes every bit of a `POLICY` key past `prefix_len`, as the trie compares
/// keys: bit by bit in memory order, most significant bit of a byte first.
pub(crate) fn mask_policy_key(key: &PolicyKey, prefix_len: u32) -> PolicyKey {
    let mut bytes = [0u8; 12];
    bytes[0..4].copy_from_slice(&key.endpoint.to_ne_bytes());
    bytes[4..8].copy_from_slice(&key.identity.to_ne_bytes());
    bytes[8] = key.direction;
    bytes[9] = key.proto;
    bytes[10..12].copy_from_slice(&key.port);
    mask_bytes(&mut bytes, prefix_len);
    PolicyKey {
        endpoint: u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
        identity: u32::from_ne_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
        direction: bytes[8],
        proto: bytes[9],
        port: [bytes[10], bytes[11]],
    }
}

/// Zeroes the bits of `bytes` past the first `prefix_len`.
pub(crate) fn mask_bytes(bytes: &mut [u8], prefix_len: u32) {
    for (i, b) in bytes.iter_mut().enumerate() {
        let start = i as u32 * 8;
        if start >= prefix_len {
            *b = 0;
        } else if prefix_len < start + 8 {
            *b &= 0xFF_u8 << (8 - (prefix_len - start));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_minimal_aligned_covers() {
        assert_eq!(Block::range(6, 80, 80), vec![Block::port(6, 80)]);
        let all = Block::range(6, 0, 65535);
        assert_eq!(
            all,
            vec![Block::protocol(6)],
            "the whole space is the protocol entry"
        );
        let b = Block::range(6, 1, 65535);
        assert_eq!(b.len(), 16, "1..=65535 needs one block per bit");
        let b = Block::range(17, 8000, 8080);
        let total: u32 = b.iter().map(Block::size).sum();
        assert_eq!(total, 81);
        for w in b.windows(2) {
            assert!(w[0].bits < w[1].bits);
        }
        for blk in &b {
            assert_eq!(
                blk.bits & !mask(blk.len),
                0,
                "aligned: no bits past the prefix"
            );
        }
    }

    #[test]
    fn containment_and_ancestors() {
        let p = Block::protocol(6);
        let x = Block::port(6, 443);
        assert!(Block::ALL.contains(&p) && p.contains(&x) && !x.contains(&p));
        assert!(!Block::protocol(17).contains(&x));
        let anc: Vec<Block> = x.ancestors().collect();
        assert_eq!(anc.len(), 24);
        assert_eq!(anc[0], Block::ALL);
        assert_eq!(anc[8], p);
        assert_eq!(x.prefix_len(), policy_prefix::FULL);
        assert_eq!(p.prefix_len(), policy_prefix::ANY_PORT);
        assert_eq!(Block::ALL.prefix_len(), policy_prefix::ANY_PROTO);
    }

    #[test]
    fn key_masking() {
        let k = Block::port(6, 0x1234).key(7, 300, 1);
        assert_eq!(k.port, [0x12, 0x34]);
        let m = mask_policy_key(&k, 84);
        assert_eq!(m.port, [0x10, 0], "only the top 4 port bits kept");
        assert_eq!(
            (m.endpoint, m.identity, m.direction, m.proto),
            (7, 300, 1, 6)
        );
        let m = mask_policy_key(&k, 72);
        assert_eq!((m.proto, m.port), (0, [0, 0]));
    }
}

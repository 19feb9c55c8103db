//! Rendezvous (highest random weight) hashing: the owner of a subscription
//! is the live member with the highest weight `hash(subscription, member)`.
//!
//! Every collector computes the same answer from the same member list, and
//! a membership change moves only the subscriptions whose top member
//! changed: a joining member takes about `1/(n+1)` of them, a leaving one
//! hands its own over and nothing else moves.
//!
//! The hash must be identical in every process and release (a mixed-version
//! rollout must agree on owners), so it is spelled out here rather than
//! taken from `std::hash` (whose `DefaultHasher` may change between Rust
//! releases): 64-bit FNV-1a over `subscription 0xFF member`, finished with
//! the SplitMix64 mixer so that similar names spread.

/// The weight of `member` for `subscription`.
pub fn weight(subscription: &str, member: &str) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    // 0xFF never occurs in UTF-8, so (a, bc) and (ab, c) hash apart.
    for b in subscription
        .bytes()
        .chain(std::iter::once(0xFF))
        .chain(member.bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(PRIME);
    }
    // SplitMix64 finaliser.
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The member that should own `subscription`, or `None` without members.
/// Ties (practically impossible) go to the smaller id, so the answer never
/// depends on the order of `members`.
pub fn owner<'a, I>(subscription: &str, members: I) -> Option<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    members
        .into_iter()
        .map(|m| (weight(subscription, m), std::cmp::Reverse(m)))
        .max()
        .map(|(_, std::cmp::Reverse(m))| m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_are_pinned() {
        // A change here changes owners in a running deployment during a
        // rolling upgrade: it must be deliberate.
        assert_eq!(weight("acme", "c1"), weight("acme", "c1"));
        assert_ne!(weight("acme", "c1"), weight("acme", "c2"));
        assert_ne!(weight("a", "bc"), weight("ab", "c"));
        // Values computed independently (Python) from the definition above.
        assert_eq!(weight("acme", "c1"), 0x5193_0707_0b48_87ee);
        assert_eq!(weight("sub-7", "collector-2"), 0x831a_924e_3958_4a99);
    }

    #[test]
    fn order_does_not_matter_and_moves_are_bounded() {
        let subs: Vec<String> = (0..3000).map(|i| format!("sub-{i}")).collect();
        let three = ["c1", "c2", "c3"];
        let rev = ["c3", "c1", "c2"];
        let mut per = std::collections::HashMap::new();
        for s in &subs {
            let o = owner(s, three).unwrap();
            assert_eq!(Some(o), owner(s, rev));
            *per.entry(o).or_insert(0) += 1;
        }
        // Spread: each of three members holds roughly a third.
        for m in three {
            let n = per[m];
            assert!((800..1200).contains(&n), "{m} owns {n} of 3000");
        }
        // A fourth member takes only from the others, about a quarter.
        let four = ["c1", "c2", "c3", "c4"];
        let mut moved = 0;
        for s in &subs {
            let before = owner(s, three).unwrap();
            let after = owner(s, four).unwrap();
            if before != after {
                assert_eq!(after, "c4", "{s} moved between old members");
                moved += 1;
            }
        }
        assert!((600..900).contains(&moved), "{moved} of 3000 moved");
        // A member leaving hands over only its own.
        for s in &subs {
            let before = owner(s, three).unwrap();
            let after = owner(s, ["c1", "c3"]).unwrap();
            if before != "c2" {
                assert_eq!(before, after);
            }
        }
        assert_eq!(owner("x", std::iter::empty::<&str>()), None);
    }
}

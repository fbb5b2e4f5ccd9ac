//! A request's field section as the client encoded it (QPACK, RFC 9204),
//! read for what h3 folds away before the router sees the head: a repeated
//! pseudo-header (h3 keeps the last), one after a regular field, and the
//! response's `:status` in a request (both dropped silently). RFC 9114 4.3
//! makes each of them malformed; a second `:path` is two readings of where
//! the request goes.
//!
//! Only names are read. The router's decoder has no dynamic table (h3 sets
//! none up), so a section that refers to one, or that ends early, is left to
//! h3's decoder, which refuses it.

/// Why a field section is malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flaw {
    Repeated,
    PseudoAfterRegular,
    ResponsePseudo,
}

impl Flaw {
    /// What was wrong, for the log.
    pub fn as_str(self) -> &'static str {
        match self {
            Flaw::Repeated => "a pseudo-header field repeated",
            Flaw::PseudoAfterRegular => "a pseudo-header field after a regular field",
            Flaw::ResponsePseudo => "the response pseudo-header field :status in a request",
        }
    }
}

/// The pseudo-header fields a name can be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pseudo {
    Authority,
    Path,
    Method,
    Scheme,
    Protocol,
    Status,
    /// Another name starting with `:`: h3 refuses it.
    Other,
}

impl Pseudo {
    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// A request pseudo-header name, spelt out and Huffman-coded (RFC 7541
/// Appendix B; the test derives each code from that table).
const NAMES: [(Pseudo, &[u8], &[u8]); 6] = [
    (
        Pseudo::Authority,
        b":authority",
        &[0xb8, 0x3b, 0x53, 0x39, 0xec, 0x32, 0x7d, 0x7f],
    ),
    (Pseudo::Path, b":path", &[0xb9, 0x58, 0xd3, 0x3f]),
    (Pseudo::Method, b":method", &[0xb9, 0x49, 0x53, 0x39, 0xe4]),
    (Pseudo::Scheme, b":scheme", &[0xb8, 0x82, 0x4e, 0x5a, 0x4b]),
    (Pseudo::Status, b":status", &[0xb8, 0x84, 0x8d, 0x36, 0xa3]),
    (
        Pseudo::Protocol,
        b":protocol",
        &[0xb9, 0x5d, 0x87, 0x49, 0xc8, 0x7a, 0x3f],
    ),
];

/// The Huffman code of `:` is seven bits, 1011100: a coded name starting with
/// it starts with `:`.
const COLON_HUFFMAN: u8 = 0b1011_1000;

/// The pseudo-header a static-table entry names, if it names one.
fn static_name(index: u64) -> Option<Pseudo> {
    // RFC 9204 Appendix A: the static table's pseudo-header entries.
    match index {
        0 => Some(Pseudo::Authority),
        1 => Some(Pseudo::Path),
        15..=21 => Some(Pseudo::Method),
        22 | 23 => Some(Pseudo::Scheme),
        24..=28 | 63..=71 => Some(Pseudo::Status),
        _ => None,
    }
}

/// The pseudo-header a literal name (plain or Huffman-coded) is, if it is one.
fn literal_name(huffman: bool, name: &[u8]) -> Option<Pseudo> {
    let pseudo = if huffman {
        name.first().is_some_and(|b| b & 0xfe == COLON_HUFFMAN)
    } else {
        name.first() == Some(&b':')
    };
    if !pseudo {
        return None;
    }
    Some(
        NAMES
            .iter()
            .find(|(_, plain, coded)| name == if huffman { *coded } else { *plain })
            .map_or(Pseudo::Other, |(p, _, _)| *p),
    )
}

/// Reads a field section's names in order. `Ok` when it is well formed as far
/// as they tell, or when reading it is h3's to refuse (a dynamic table
/// reference, a section cut short).
pub fn check(section: &[u8]) -> Result<(), Flaw> {
    let mut r = Reader(section);
    let Some(required_insert_count) = r.int(8) else {
        return Ok(());
    };
    if required_insert_count != 0 || r.int(7).is_none() {
        return Ok(());
    }
    let mut seen = 0u8;
    let mut regular = false;
    while let Some(&first) = r.0.first() {
        let name = if first & 0x80 != 0 {
            // Indexed field line; T (0x40) set: the static table.
            let dynamic = first & 0x40 == 0;
            let Some(index) = r.int(6) else { return Ok(()) };
            if dynamic {
                return Ok(());
            }
            static_name(index)
        } else if first & 0x40 != 0 {
            // Literal with name reference; T (0x10) set: the static table.
            let dynamic = first & 0x10 == 0;
            let Some(index) = r.int(4) else { return Ok(()) };
            if dynamic || r.string(7).is_none() {
                return Ok(());
            }
            static_name(index)
        } else if first & 0x20 != 0 {
            // Literal with literal name; H (0x08): Huffman-coded.
            let huffman = first & 0x08 != 0;
            let Some(name) = r.string(3) else {
                return Ok(());
            };
            if r.string(7).is_none() {
                return Ok(());
            }
            literal_name(huffman, name)
        } else {
            // Post-base references: the dynamic table.
            return Ok(());
        };
        match name {
            None => regular = true,
            Some(_) if regular => return Err(Flaw::PseudoAfterRegular),
            Some(Pseudo::Status) => return Err(Flaw::ResponsePseudo),
            Some(p) if seen & p.bit() != 0 => return Err(Flaw::Repeated),
            Some(p) => seen |= p.bit(),
        }
    }
    Ok(())
}

/// A field section being read: prefixed integers (RFC 7541 5.1) and strings.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    /// An integer in the low `bits` bits of the next byte and what follows.
    fn int(&mut self, bits: u32) -> Option<u64> {
        let (&first, mut rest) = self.0.split_first()?;
        let max = (1u64 << bits) - 1;
        let mut value = u64::from(first) & max;
        if value == max {
            let mut shift = 0;
            loop {
                let (&b, tail) = rest.split_first()?;
                rest = tail;
                // Past 2^62 (QUIC's largest integer) it is nothing h3 accepts.
                if shift > 56 {
                    return None;
                }
                value = value.checked_add(u64::from(b & 0x7f) << shift)?;
                shift += 7;
                if b & 0x80 == 0 {
                    break;
                }
            }
        }
        self.0 = rest;
        Some(value)
    }

    /// A string whose length has a `bits`-bit prefix (the Huffman flag is the
    /// bit above it, read by the caller).
    fn string(&mut self, bits: u32) -> Option<&'a [u8]> {
        let len = usize::try_from(self.int(bits)?).ok()?;
        if len > self.0.len() {
            return None;
        }
        let (s, rest) = self.0.split_at(len);
        self.0 = rest;
        Some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// RFC 7541 Appendix B, the characters of the pseudo-header names.
    const CODES: [(u8, u32, u32); 16] = [
        (b':', 0b1011100, 7),
        (b'a', 0b00011, 5),
        (b'c', 0b00100, 5),
        (b'd', 0b100100, 6),
        (b'e', 0b00101, 5),
        (b'h', 0b100111, 6),
        (b'i', 0b00110, 5),
        (b'l', 0b101000, 6),
        (b'm', 0b101001, 6),
        (b'o', 0b00111, 5),
        (b'p', 0b101011, 6),
        (b'r', 0b101100, 6),
        (b's', 0b01000, 5),
        (b't', 0b01001, 5),
        (b'u', 0b101101, 6),
        (b'y', 0b1111010, 7),
    ];

    fn huffman(s: &[u8]) -> Vec<u8> {
        let (mut acc, mut n, mut out) = (0u64, 0u32, Vec::new());
        for c in s {
            let (_, code, len) = CODES.iter().find(|(ch, _, _)| ch == c).unwrap();
            acc = (acc << len) | u64::from(*code);
            n += len;
            while n >= 8 {
                out.push((acc >> (n - 8)) as u8);
                n -= 8;
            }
        }
        if n > 0 {
            // Padded with the EOS code's most significant bits (all ones).
            out.push(((acc << (8 - n)) | ((1 << (8 - n)) - 1)) as u8);
        }
        out
    }

    #[test]
    fn the_coded_names_are_their_huffman_codes() {
        for (_, plain, coded) in NAMES {
            assert_eq!(huffman(plain), coded, "{}", String::from_utf8_lossy(plain));
        }
    }

    /// A field section: the prefix, then the lines.
    fn section(lines: &[&[u8]]) -> Vec<u8> {
        let mut s = vec![0, 0];
        for l in lines {
            s.extend_from_slice(l);
        }
        s
    }
    const GET: &[u8] = &[0xc0 | 17];
    const HTTPS: &[u8] = &[0xc0 | 23];
    const SLASH: &[u8] = &[0xc0 | 1];
    const STATUS_200: &[u8] = &[0xc0 | 25];
    /// `:authority: a` by static name reference.
    const AUTHORITY: &[u8] = &[0x50, 1, b'a'];
    /// `x-a: 1`, a literal name.
    const REGULAR: &[u8] = &[0x23, b'x', b'-', b'a', 1, b'1'];

    fn literal(name: &[u8], huffman: bool) -> Vec<u8> {
        let mut l = vec![0x20 | if huffman { 0x08 } else { 0 } | name.len() as u8];
        l.extend_from_slice(name);
        l.extend_from_slice(&[1, b'/']);
        l
    }

    #[test]
    fn a_request_in_order_with_each_pseudo_header_once_is_well_formed() {
        assert_eq!(
            check(&section(&[GET, HTTPS, AUTHORITY, SLASH, REGULAR, REGULAR])),
            Ok(())
        );
        assert_eq!(check(&section(&[GET, HTTPS, AUTHORITY, SLASH])), Ok(()));
    }

    #[test]
    fn a_repeated_pseudo_header_is_malformed_however_it_is_encoded() {
        let lines: [&[u8]; 5] = [GET, HTTPS, AUTHORITY, SLASH, SLASH];
        assert_eq!(check(&section(&lines)), Err(Flaw::Repeated));
        // `:path` as a static name reference with a value of its own.
        let path_ref: &[u8] = &[0x51, 2, b'/', b'x'];
        assert_eq!(
            check(&section(&[GET, SLASH, path_ref])),
            Err(Flaw::Repeated)
        );
        for coded in [false, true] {
            let name = if coded {
                huffman(b":path")
            } else {
                b":path".to_vec()
            };
            let l = literal(&name, coded);
            assert_eq!(
                check(&section(&[GET, SLASH, &l])),
                Err(Flaw::Repeated),
                "{coded}"
            );
            // Once is fine.
            assert_eq!(check(&section(&[GET, HTTPS, &l])), Ok(()), "{coded}");
        }
        assert_eq!(check(&section(&[GET, &[0xc0 | 20]])), Err(Flaw::Repeated));
    }

    #[test]
    fn a_pseudo_header_after_a_regular_field_is_malformed() {
        assert_eq!(
            check(&section(&[GET, HTTPS, AUTHORITY, REGULAR, SLASH])),
            Err(Flaw::PseudoAfterRegular)
        );
        // An unknown pseudo-header counts too (h3 would refuse it anyway).
        let other = literal(b":foo", false);
        assert_eq!(
            check(&section(&[GET, REGULAR, &other])),
            Err(Flaw::PseudoAfterRegular)
        );
        assert_eq!(check(&section(&[GET, &other, REGULAR])), Ok(()));
    }

    #[test]
    fn a_status_in_a_request_is_malformed() {
        assert_eq!(
            check(&section(&[GET, HTTPS, SLASH, STATUS_200])),
            Err(Flaw::ResponsePseudo)
        );
        assert_eq!(check(&section(&[STATUS_200])), Err(Flaw::ResponsePseudo));
        let l = literal(&huffman(b":status"), true);
        assert_eq!(check(&section(&[GET, &l])), Err(Flaw::ResponsePseudo));
    }

    #[test]
    fn what_needs_a_dynamic_table_or_ends_early_is_left_to_h3() {
        // Required Insert Count 1.
        assert_eq!(check(&[1, 0, 0xc0 | 1, 0xc0 | 1]), Ok(()));
        // A dynamic reference before the repeat.
        assert_eq!(check(&section(&[SLASH, &[0x80], SLASH])), Ok(()));
        // Cut inside a string.
        assert_eq!(check(&section(&[SLASH, &[0x51, 5, b'/']])), Ok(()));
        assert_eq!(check(&[]), Ok(()));
    }

    #[test]
    fn long_integers_are_read_across_bytes() {
        // Static index 63 (`:status 100`): 6-bit prefix full, then 0.
        assert_eq!(
            check(&section(&[GET, &[0xff, 0]])),
            Err(Flaw::ResponsePseudo)
        );
        let mut r = Reader(&[0x1f, 0x9a, 0x0a]);
        assert_eq!(r.int(5), Some(1337)); // RFC 7541 C.1.2
    }

    proptest! {
        /// Never panics, whatever the bytes.
        #[test]
        fn any_bytes_are_read_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = check(&bytes);
        }

        /// A section of well-formed lines: a flaw is found exactly when the
        /// names break a rule.
        #[test]
        fn flaws_are_found_exactly_when_the_names_break_a_rule(
            lines in proptest::collection::vec(0usize..6, 0..8)
        ) {
            const CHOICES: [&[u8]; 6] = [GET, HTTPS, AUTHORITY, SLASH, STATUS_200, REGULAR];
            let encoded: Vec<&[u8]> = lines.iter().map(|&i| CHOICES[i]).collect();
            let mut expected = Ok(());
            let (mut seen, mut regular) = (Vec::new(), false);
            for &i in &lines {
                if i == 5 { regular = true; continue; }
                if regular { expected = Err(Flaw::PseudoAfterRegular); break; }
                if i == 4 { expected = Err(Flaw::ResponsePseudo); break; }
                if seen.contains(&i) { expected = Err(Flaw::Repeated); break; }
                seen.push(i);
            }
            prop_assert_eq!(check(&section(&encoded)), expected);
        }
    }
}

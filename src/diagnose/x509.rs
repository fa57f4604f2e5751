//! Just enough DER to read a certificate's validity, and the HTTP `Date` header: the two
//! times `tetherd diagnose` compares with the clock.
//!
//! Written by hand: a full X.509 parser (and its dozen dependencies) in the shipped binary
//! for two dates is not worth it. Only what the certificate already passed (or failed)
//! rustls' verification with is read here, and every length is checked against what is
//! left, so a malformed certificate gives `None`, never a panic.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One DER element: its tag, its contents, and what follows it.
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    if tag & 0x1f == 0x1f {
        return None; // multi-byte tags never occur where we look
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = match first {
        n if n < 0x80 => (usize::from(n), rest),
        0x81..=0x84 => {
            let n = usize::from(first & 0x7f);
            if rest.len() < n {
                return None;
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
            (len, &rest[n..])
        }
        _ => return None,
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

fn expect(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    match element(input)? {
        (t, content, rest) if t == tag => Some((content, rest)),
        _ => None,
    }
}

/// A DER certificate's notBefore and notAfter.
pub fn validity(der: &[u8]) -> Option<(SystemTime, SystemTime)> {
    const SEQUENCE: u8 = 0x30;
    let (cert, _) = expect(der, SEQUENCE)?;
    let (tbs, _) = expect(cert, SEQUENCE)?;
    let mut rest = tbs;
    // version [0] EXPLICIT, absent in v1 certificates
    if let Some((0xa0, _, after)) = element(rest) {
        rest = after;
    }
    let (_serial, rest) = expect(rest, 0x02)?;
    let (_algorithm, rest) = expect(rest, SEQUENCE)?;
    let (_issuer, rest) = expect(rest, SEQUENCE)?;
    let (validity, _) = expect(rest, SEQUENCE)?;
    let (t1, before, rest) = element(validity)?;
    let (t2, after, _) = element(rest)?;
    Some((time(t1, before)?, time(t2, after)?))
}

/// UTCTime (YYMMDDHHMMSSZ) or GeneralizedTime (YYYYMMDDHHMMSSZ), as RFC 5280 allows them.
fn time(tag: u8, text: &[u8]) -> Option<SystemTime> {
    let text = std::str::from_utf8(text).ok()?.strip_suffix('Z')?;
    let (year, rest) = match (tag, text.len()) {
        (0x17, 12) => {
            let yy: i64 = text[..2].parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &text[2..])
        }
        (0x18, 14) => (text[..4].parse().ok()?, &text[4..]),
        _ => return None,
    };
    let field = |i: usize| -> Option<u64> {
        let s = rest.get(i..i + 2)?;
        if !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    at(
        year,
        field(0)?,
        field(2)?,
        field(4)? * 3600 + field(6)? * 60 + field(8)?,
    )
}

/// The time of a civil date (UTC) plus `secs` into that day.
fn at(year: i64, month: u64, day: u64, secs: u64) -> Option<SystemTime> {
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || secs >= 86_400 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let days = u64::try_from(days).ok()?;
    UNIX_EPOCH.checked_add(Duration::from_secs(days * 86_400 + secs))
}

/// Days since 1970-01-01 (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: u64, day: u64) -> i64 {
    let (m, d) = (
        i64::try_from(month).unwrap_or(1),
        i64::try_from(day).unwrap_or(1),
    );
    let y = if m <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// An HTTP `Date` header (IMF-fixdate: `Sun, 06 Nov 1994 08:49:37 GMT`).
pub fn http_date(value: &str) -> Option<SystemTime> {
    let parts: Vec<&str> = value.split_whitespace().collect();
    let [_, day, month, year, clock, "GMT"] = parts.as_slice() else {
        return None;
    };
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| m == month)? + 1;
    let hms: Vec<u64> = clock
        .split(':')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    let [h, m, s] = hms.as_slice() else {
        return None;
    };
    if *h >= 24 || *m >= 60 || *s >= 61 {
        return None;
    }
    at(
        year.parse().ok()?,
        u64::try_from(month).ok()?,
        day.parse().ok()?,
        h * 3600 + m * 60 + s.min(&59),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ymd(y: i64, m: u64, d: u64) -> SystemTime {
        at(y, m, d, 0).unwrap()
    }

    #[test]
    fn civil_dates_match_known_epochs() {
        assert_eq!(ymd(1970, 1, 1), UNIX_EPOCH);
        assert_eq!(
            ymd(2000, 3, 1),
            UNIX_EPOCH + Duration::from_secs(951_868_800)
        );
        assert_eq!(
            http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(UNIX_EPOCH + Duration::from_secs(784_111_777))
        );
        assert_eq!(http_date("Sunday, 06-Nov-94 08:49:37 GMT"), None);
        assert_eq!(http_date("Sun, 06 Nov 1994 25:49:37 GMT"), None);
    }

    #[test]
    fn utc_and_generalized_times() {
        assert_eq!(time(0x17, b"491231235959Z"), at(2049, 12, 31, 86_399));
        // 1950 is before the epoch: no certificate this code meets.
        assert_eq!(time(0x17, b"500101000000Z"), None);
        assert_eq!(time(0x18, b"21000101000000Z"), Some(ymd(2100, 1, 1)));
        assert_eq!(time(0x18, b"2100010100000Z"), None);
        assert_eq!(time(0x17, b"4912312359xxZ"), None);
    }

    #[test]
    fn garbage_is_none_not_a_panic() {
        for bytes in [
            &b""[..],
            &[0x30],
            &[0x30, 0x84, 0xff, 0xff, 0xff, 0xff],
            &[0x30, 0x03, 0x30, 0x01],
            &[0x1f, 0x00],
        ] {
            assert_eq!(validity(bytes), None);
        }
    }

    #[cfg(feature = "devcloud")]
    #[test]
    fn reads_what_rcgen_wrote() {
        let mut params = rcgen::CertificateParams::new(vec!["x".to_owned()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2021, 2, 3);
        params.not_after = rcgen::date_time_ymd(2051, 4, 5);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(
            validity(cert.der()),
            Some((ymd(2021, 2, 3), ymd(2051, 4, 5)))
        );
    }
}

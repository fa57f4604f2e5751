use serde_json::json;

use super::*;

#[test]
fn json_is_serialized_and_parsed() {
    let payload = json!({"power": "on", "level": 3});
    let bytes = encode(&payload, Encoding::Json).unwrap();
    assert_eq!(bytes, br#"{"level":3,"power":"on"}"#.to_vec());
    assert_eq!(decode(&bytes, Encoding::Json).unwrap(), payload);
    // Any JSON value is a payload, a bare string too.
    assert_eq!(
        encode(&json!("hi"), Encoding::Json).unwrap(),
        b"\"hi\"".to_vec()
    );
}

#[test]
fn an_answer_that_is_not_json_is_an_error_naming_its_bytes() {
    let err = decode(b"ok\xff", Encoding::Json).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("not JSON"), "{text}");
    assert!(text.contains("3 byte(s): 6f6bff"), "{text}");
    assert!(decode(b"", Encoding::Json).is_err());
}

#[test]
fn utf8_needs_a_string_and_answers_text() {
    assert_eq!(
        encode(&json!("héllo"), Encoding::Utf8).unwrap(),
        "héllo".as_bytes().to_vec()
    );
    assert_eq!(
        encode(&json!({"a": 1}), Encoding::Utf8).unwrap_err(),
        CodecError::NotAString("utf8")
    );
    assert_eq!(decode(b"done", Encoding::Utf8).unwrap(), json!("done"));
    assert!(decode(b"\xc3", Encoding::Utf8).is_err());
}

#[test]
fn hex_both_ways() {
    assert_eq!(
        encode(&json!("00ff10Ab"), Encoding::Hex).unwrap(),
        vec![0x00, 0xff, 0x10, 0xab]
    );
    assert_eq!(encode(&json!(""), Encoding::Hex).unwrap(), Vec::<u8>::new());
    assert!(matches!(
        encode(&json!("abc"), Encoding::Hex),
        Err(CodecError::BadHex(_))
    ));
    assert!(matches!(
        encode(&json!("zz"), Encoding::Hex),
        Err(CodecError::BadHex(_))
    ));
    assert_eq!(
        encode(&json!(12), Encoding::Hex).unwrap_err(),
        CodecError::NotAString("hex")
    );
    assert_eq!(
        decode(&[0xde, 0xad, 0x01], Encoding::Hex).unwrap(),
        json!("dead01")
    );
}

#[test]
fn base64_matches_rfc4648_vectors() {
    let vectors = [
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg=="),
        ("fooba", "Zm9vYmE="),
        ("foobar", "Zm9vYmFy"),
    ];
    for (plain, coded) in vectors {
        assert_eq!(base64_encode(plain.as_bytes()), coded, "{plain}");
        assert_eq!(
            encode(&json!(coded), Encoding::Base64).unwrap(),
            plain.as_bytes().to_vec(),
            "{coded}"
        );
        assert_eq!(
            decode(plain.as_bytes(), Encoding::Base64).unwrap(),
            json!(coded)
        );
    }
    let all: Vec<u8> = (0..=255).collect();
    let coded = base64_encode(&all);
    assert_eq!(encode(&json!(coded), Encoding::Base64).unwrap(), all);
    // Padding may be left out.
    assert_eq!(
        encode(&json!("Zm8"), Encoding::Base64).unwrap(),
        b"fo".to_vec()
    );
}

#[test]
fn bad_base64_is_refused() {
    for bad in ["Zm9v!", "Z", "Zg===", "Zg=a", "Zm9v Zg==", "-_8="] {
        assert!(
            matches!(
                encode(&json!(bad), Encoding::Base64),
                Err(CodecError::BadBase64(_))
            ),
            "{bad}"
        );
    }
    assert_eq!(
        encode(&json!(null), Encoding::Base64).unwrap_err(),
        CodecError::NotAString("base64")
    );
}

#[test]
fn a_command_longer_than_an_attribute_is_refused() {
    assert_eq!(
        decode(&[b'x'; MAX_ATTRIBUTE + 1], Encoding::Hex),
        Err(CodecError::AnswerTooLong(MAX_ATTRIBUTE + 1))
    );
    let long = "x".repeat(MAX_ATTRIBUTE + 1);
    assert_eq!(
        encode(&json!(long), Encoding::Utf8).unwrap_err(),
        CodecError::TooLong(MAX_ATTRIBUTE + 1)
    );
    let fits = "x".repeat(MAX_ATTRIBUTE);
    assert!(encode(&json!(fits), Encoding::Utf8).is_ok());
}

#[test]
fn uuids_long_and_short() {
    assert_eq!(
        parse_uuid("6E400001-B5A3-F393-E0A9-E50E24DCCA9E")
            .unwrap()
            .to_string(),
        "6e400001-b5a3-f393-e0a9-e50e24dcca9e"
    );
    assert_eq!(
        parse_uuid("180d").unwrap().to_string(),
        "0000180d-0000-1000-8000-00805f9b34fb"
    );
    assert!(parse_uuid("180").is_err());
    assert!(parse_uuid("6e400001b5a3f393e0a9e50e24dcca9e").is_err());
    assert!(parse_uuid("6e400001-b5a3-f393-e0a9-e50e24dcca9g").is_err());
}

#[test]
fn addresses() {
    assert_eq!(
        parse_address("aa:bb:cc:dd:ee:0f").unwrap().to_string(),
        "AA:BB:CC:DD:EE:0F"
    );
    assert!(parse_address("aabbccddeeff").is_err());
    assert!(parse_address("AA:BB:CC:DD:EE").is_err());
    assert!(parse_address("AA:BB:CC:DD:EE:GG").is_err());
}

#[test]
fn encoding_names() {
    for e in [
        Encoding::Json,
        Encoding::Utf8,
        Encoding::Hex,
        Encoding::Base64,
    ] {
        let parsed: Encoding = serde_json::from_value(json!(e.as_str())).unwrap();
        assert_eq!(parsed, e);
    }
    assert_eq!(Encoding::default(), Encoding::Json);
}

#[test]
fn a_json_answer_nested_too_deep_is_an_error() {
    let deep = format!("{}{}", "[".repeat(100), "]".repeat(100));
    assert_eq!(
        decode(deep.as_bytes(), Encoding::Json),
        Err(CodecError::AnswerTooDeep(100))
    );
    let fine = format!(
        "{}{}",
        "[".repeat(MAX_PAYLOAD_DEPTH),
        "]".repeat(MAX_PAYLOAD_DEPTH)
    );
    assert!(decode(fine.as_bytes(), Encoding::Json).is_ok());
}

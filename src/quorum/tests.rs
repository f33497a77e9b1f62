//! Tests of splitting, combining and sealing shares: what a bad, mixed, altered or mistyped
//! share does, and that nothing secret shows in a share's text header or `Debug`.

use super::*;

fn holders(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("officer {i}")).collect()
}

fn reread(share: &Share, passphrase: Option<&str>) -> Share {
    let text = share.to_text(passphrase, 1000, "now").expect("text");
    SealedShare::parse("share", &text)
        .expect("parse")
        .open(passphrase)
        .expect("open")
}

#[test]
fn any_three_of_five_rebuild_the_pin_and_two_do_not() {
    let split = split(3, &holders(5), "root-token").expect("split");
    assert_eq!(split.pin.expose().len(), 2 * PIN_BYTES);
    let shares: Vec<Share> = split.shares.iter().map(|s| reread(s, None)).collect();
    for a in 0..5 {
        for b in a + 1..5 {
            for c in b + 1..5 {
                let pin = combine(&[shares[a].clone(), shares[b].clone(), shares[c].clone()])
                    .expect("combine");
                assert_eq!(pin.expose(), split.pin.expose());
            }
            let err = combine(&[shares[a].clone(), shares[b].clone()]).expect_err("two");
            assert!(
                matches!(
                    err,
                    QuorumError::NotEnough {
                        given: 2,
                        threshold: 3,
                        ..
                    }
                ),
                "{err}"
            );
        }
    }
    // All five work too.
    assert_eq!(combine(&shares).expect("all").expose(), split.pin.expose());
}

#[test]
fn typed_in_shares_ignore_case_spaces_and_dashes_and_catch_typos() {
    let split = split(2, &holders(3), "t").expect("split");
    let text = split.shares[0].to_text(None, 0, "now").expect("text");
    let start = text.find(BEGIN).expect("begin") + BEGIN.len();
    let block = &text[start..text.find(END).expect("end")];
    let typed = block.to_lowercase().replace('-', " ");
    let share = SealedShare::parse("typed", &typed).expect("parse");
    assert_eq!(share.index, 1);
    assert_eq!(share.holder, "officer 1");
    // One character changed: the checksum catches it.
    let mut chars: Vec<char> = block.trim().chars().collect();
    let i = chars
        .iter()
        .position(|c| c.is_ascii_alphanumeric())
        .expect("char");
    chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
    let typo: String = chars.into_iter().collect();
    assert!(matches!(
        SealedShare::parse("typed", &typo),
        Err(QuorumError::Checksum(_)) | Err(QuorumError::Malformed { .. })
    ));
}

#[test]
fn an_altered_share_with_a_fixed_checksum_is_refused_before_any_login() {
    let split = split(2, &holders(3), "t").expect("split");
    let mut bad = split.shares[1].clone();
    bad.value[3] ^= 0x55;
    // Re-encoding recomputes the checksum, as an officer forging a share would.
    let bad = reread(&bad, None);
    let err = combine(&[split.shares[0].clone(), bad]).expect_err("altered");
    assert!(matches!(err, QuorumError::Commitment(_)), "{err}");
}

#[test]
fn shares_of_different_splits_or_repeated_shares_are_refused() {
    let a = split(2, &holders(3), "t").expect("split");
    let b = split(2, &holders(3), "t").expect("split");
    assert!(matches!(
        combine(&[a.shares[0].clone(), b.shares[1].clone()]),
        Err(QuorumError::MixedQuorums(..))
    ));
    assert!(matches!(
        combine(&[a.shares[0].clone(), a.shares[0].clone()]),
        Err(QuorumError::Duplicate(1))
    ));
}

#[test]
fn encrypted_shares_need_their_passphrase() {
    let split = split(2, &holders(2), "t").expect("split");
    let text = split.shares[0]
        .to_text(Some("correct horse battery"), 1000, "now")
        .expect("text");
    assert!(text.contains("Encrypted: yes"));
    let sealed = SealedShare::parse("f", &text).expect("parse");
    assert!(sealed.is_encrypted());
    assert!(matches!(
        sealed.open(None),
        Err(QuorumError::PassphraseNeeded(_))
    ));
    assert!(matches!(
        sealed.open(Some("wrong horse battery")),
        Err(QuorumError::WrongPassphrase(_))
    ));
    let opened = sealed.open(Some("correct horse battery")).expect("open");
    let pin = combine(&[opened, split.shares[1].clone()]).expect("combine");
    assert_eq!(pin.expose(), split.pin.expose());
    assert!(matches!(
        split.shares[0].to_text(Some("short"), 1000, "now"),
        Err(QuorumError::WeakPassphrase)
    ));
}

#[test]
fn nothing_secret_in_the_text_header_or_debug() {
    let split = split(2, &holders(2), "t").expect("split");
    let text = split.shares[0].to_text(None, 0, "now").expect("text");
    assert!(!text.contains(split.pin.expose()));
    let shown = format!("{:?}", split.shares[0]);
    assert!(shown.contains("redacted"), "{shown}");
}

#[test]
fn thresholds_outside_two_to_n_are_refused() {
    assert!(matches!(
        split(1, &holders(3), "t"),
        Err(QuorumError::BadThreshold { .. })
    ));
    assert!(matches!(
        split(4, &holders(3), "t"),
        Err(QuorumError::BadThreshold { .. })
    ));
}

#[test]
fn begin_and_end_lines_that_share_their_dashes_are_damaged_not_a_crash() {
    // Found by the `shares` fuzz target: the END line starting inside the BEGIN line's dashes.
    for text in [
        "-----BEGIN HSM-CA PIN SHARE-------END HSM-CA PIN SHARE-----",
        "x-----BEGIN HSM-CA PIN SHARE----END HSM-CA PIN SHARE-----",
        "-----END HSM-CA PIN SHARE----- then -----BEGIN HSM-CA PIN SHARE-----",
    ] {
        let parsed = SealedShare::parse("typed", text);
        assert!(
            matches!(parsed, Err(QuorumError::Malformed { .. })),
            "{text:?}"
        );
    }
}

use super::*;

/// One drain at `now` of `received` datagrams, `refused` of them refused.
fn drain(pacing: &mut ReadPacing, received: usize, refused: usize, now: Instant) {
    pacing.after_drain(received, refused, now);
}

#[test]
fn a_quiet_or_busy_socket_is_read_at_once() {
    let mut pacing = ReadPacing::default();
    let now = Instant::now();
    assert_eq!(pacing.not_before(), None);
    // Real traffic, with a refusal now and then.
    for _ in 0..10 {
        drain(&mut pacing, 32, 2, now);
        assert_eq!(pacing.not_before(), None);
        assert!(!pacing.is_deferring());
    }
}

#[test]
fn a_sample_of_mostly_refusals_defers_the_next_read() {
    let mut pacing = ReadPacing::default();
    let now = Instant::now();
    // A flood read a datagram or two per wake-up: no judgement until a
    // whole sample has been seen.
    for _ in 0..(PACING_SAMPLE - 1) {
        drain(&mut pacing, 1, 1, now);
        assert_eq!(pacing.not_before(), None);
    }
    drain(&mut pacing, 1, 1, now);
    assert!(pacing.is_deferring());
    assert_eq!(pacing.not_before(), Some(now + FLOODED_READ_DELAY));
    // Each later read waits after the last one, not after the first.
    let later = now + Duration::from_millis(5);
    drain(&mut pacing, 3, 3, later);
    assert_eq!(pacing.not_before(), Some(later + FLOODED_READ_DELAY));
}

#[test]
fn three_refusals_in_four_is_the_threshold() {
    let now = Instant::now();
    let mut below = ReadPacing::default();
    drain(&mut below, 32, 23, now);
    assert!(!below.is_deferring());
    let mut at = ReadPacing::default();
    drain(&mut at, 32, 24, now);
    assert!(at.is_deferring());
}

#[test]
fn real_traffic_in_a_later_sample_reads_eagerly_again() {
    let mut pacing = ReadPacing::default();
    let now = Instant::now();
    drain(&mut pacing, 64, 64, now);
    assert!(pacing.is_deferring());
    // Within a sample the judgement stands, so the flood cannot switch it
    // off by pausing for a drain.
    drain(&mut pacing, 16, 0, now);
    assert!(pacing.is_deferring());
    drain(&mut pacing, 16, 0, now);
    assert!(!pacing.is_deferring());
    assert_eq!(pacing.not_before(), None);
}

#[test]
fn a_flood_long_gone_is_forgotten() {
    let mut pacing = ReadPacing::default();
    let now = Instant::now();
    drain(&mut pacing, 32, 32, now);
    assert!(pacing.is_deferring());
    drain(&mut pacing, 1, 0, now + PACING_MEMORY);
    assert!(!pacing.is_deferring());
    assert_eq!(pacing.not_before(), None);
}

#[test]
fn refusals_never_count_for_more_than_was_received() {
    let mut pacing = ReadPacing::default();
    let now = Instant::now();
    // A miscount must not tip a sample of real traffic into deferral.
    drain(&mut pacing, 8, 100, now);
    drain(&mut pacing, 24, 0, now);
    assert!(!pacing.is_deferring());
}

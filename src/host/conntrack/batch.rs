//! Several ctnetlink requests in one datagram: one `send`, then one acknowledgement per
//! request, matched by sequence number.
//!
//! The kernel handles every message of a datagram in turn (`netlink_rcv_skb`), within the
//! `send`, and acknowledges each on its own; one that fails does not stop the next. So a
//! batch saves a system call per request and keeps each request's own outcome: a create
//! refused with EEXIST in the middle of a batch fails that create alone.
//!
//! [`Answers`] is the pure half (which request an acknowledgement answers);
//! [`Conntrack::batch`] sends and reads.

use std::io;

use super::{wire, Conntrack, ConntrackError, NatEntry, Tuple};

/// One request of a batch.
#[derive(Debug, Clone, Copy)]
pub enum Request<'a> {
    /// Create this entry (`NLM_F_EXCL`: EEXIST when its tuple has one).
    Create(&'a NatEntry),
    /// Delete the entry whose original tuple this is (ENOENT when there is none).
    Delete(&'a Tuple),
}

impl Request<'_> {
    /// The operation's name in errors.
    pub fn op(&self) -> &'static str {
        match self {
            Request::Create(_) => "create",
            Request::Delete(_) => "delete",
        }
    }

    /// Its message, with sequence number `seq`.
    pub fn message(&self, seq: u32) -> Vec<u8> {
        match self {
            Request::Create(e) => wire::create(seq, e),
            Request::Delete(t) => wire::delete(seq, t),
        }
    }
}

/// What the kernel answered so far to the requests of one batch (pure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answers {
    /// The sequence number of each request, in order.
    seqs: Vec<u32>,
    /// Its errno once acknowledged (0: done).
    errnos: Vec<Option<i32>>,
    left: usize,
}

impl Answers {
    pub fn new(seqs: Vec<u32>) -> Answers {
        let n = seqs.len();
        Answers {
            seqs,
            errnos: vec![None; n],
            left: n,
        }
    }

    /// Take one message from the kernel: an acknowledgement of a request of this batch not
    /// answered yet is recorded (true); anything else (a late answer to an earlier request,
    /// a repeat) is not.
    pub fn take(&mut self, m: &wire::Message) -> bool {
        let wire::Message::Ack { seq, errno } = *m else {
            return false;
        };
        let Some(i) = self.seqs.iter().position(|s| *s == seq) else {
            return false;
        };
        if self.errnos[i].is_some() {
            return false;
        }
        self.errnos[i] = Some(errno);
        self.left -= 1;
        true
    }

    /// Every request answered.
    pub fn done(&self) -> bool {
        self.left == 0
    }

    /// Each request's outcome: acknowledged, refused with its errno, or — when reading
    /// stopped on `lost` before its answer came — that error.
    pub fn results(
        &self,
        reqs: &[Request<'_>],
        lost: Option<&io::Error>,
    ) -> Vec<Result<(), ConntrackError>> {
        reqs.iter()
            .zip(&self.errnos)
            .map(|(r, e)| match e {
                Some(0) => Ok(()),
                Some(errno) => Err(ConntrackError::Refused {
                    op: r.op(),
                    source: io::Error::from_raw_os_error(*errno),
                }),
                None => Err(ConntrackError::Io {
                    op: r.op(),
                    source: match lost {
                        Some(l) => io::Error::new(l.kind(), l.to_string()),
                        None => io::ErrorKind::TimedOut.into(),
                    },
                }),
            })
            .collect()
    }
}

impl Conntrack {
    /// Send `reqs` in one datagram and read their acknowledgements: one result per request,
    /// in order.
    pub fn batch(&mut self, reqs: &[Request<'_>]) -> Vec<Result<(), ConntrackError>> {
        if reqs.is_empty() {
            return Vec::new();
        }
        let seqs: Vec<u32> = reqs.iter().map(|_| self.next_seq()).collect();
        let mut datagram = Vec::with_capacity(reqs.len() * 256);
        for (r, seq) in reqs.iter().zip(&seqs) {
            datagram.extend_from_slice(&r.message(*seq));
        }
        let mut answers = Answers::new(seqs);
        if let Err(e) = self.sock.send(&datagram, 0) {
            return answers.results(reqs, Some(&e));
        }
        let mut lost = None;
        while !answers.done() {
            let n = {
                let mut slice = &mut self.buf[..];
                match self.sock.recv(&mut slice, 0) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        lost = Some(e);
                        break;
                    }
                }
            };
            for m in wire::parse(&self.buf[..n]).into_iter().flatten() {
                answers.take(&m);
            }
        }
        answers.results(reqs, lost.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::conntrack::wire::Message;
    use crate::host::conntrack::MARK_OWNER;

    fn entry(port: u16) -> NatEntry {
        NatEntry {
            orig: Tuple::tcp(
                ([192, 168, 1, 50], port).into(),
                ([10, 96, 0, 10], 80).into(),
            ),
            endpoint: ([10, 244, 1, 10], 8080).into(),
            source: [10, 244, 1, 1].into(),
            source_ports: (1024, 65535),
            mark: MARK_OWNER,
            timeout: 120,
            tcp_state: Some(1),
            be_liberal: false,
        }
    }

    #[test]
    fn a_batch_is_its_messages_back_to_back_each_with_its_own_sequence() {
        let (a, b) = (entry(40000), entry(40001));
        let reqs = [
            Request::Create(&a),
            Request::Delete(&b.orig),
            Request::Create(&b),
        ];
        let mut datagram = Vec::new();
        for (i, r) in reqs.iter().enumerate() {
            datagram.extend(r.message(7 + i as u32));
        }
        let want = [
            wire::create(7, &a),
            wire::delete(8, &b.orig),
            wire::create(9, &b),
        ]
        .concat();
        assert_eq!(datagram, want);
        // Each message keeps its own length: the datagram splits back into three, in order.
        let parsed: Vec<Message> = wire::parse(&datagram)
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(parsed.len(), 3);
        let seqs: Vec<u32> = parsed
            .iter()
            .map(|m| match m {
                Message::Entry { seq, entry, .. } => {
                    assert!(entry.orig.is_some());
                    *seq
                }
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(seqs, [7, 8, 9]);
    }

    #[test]
    fn acknowledgements_match_by_sequence_and_one_failure_stays_its_own() {
        let (a, b, c) = (entry(1), entry(2), entry(3));
        let reqs = [
            Request::Create(&a),
            Request::Create(&b),
            Request::Create(&c),
        ];
        let mut ans = Answers::new(vec![41, 42, 43]);
        // Out of order, with a late answer to an earlier request and a non-ack in between.
        assert!(!ans.take(&Message::Ack { seq: 40, errno: 0 }));
        assert!(ans.take(&Message::Ack { seq: 43, errno: 0 }));
        assert!(!ans.take(&Message::Done { seq: 41 }));
        assert!(ans.take(&Message::Ack {
            seq: 42,
            errno: libc::EEXIST
        }));
        assert!(!ans.done());
        // A repeat does not count twice.
        assert!(!ans.take(&Message::Ack {
            seq: 43,
            errno: libc::ENOMEM
        }));
        assert!(ans.take(&Message::Ack { seq: 41, errno: 0 }));
        assert!(ans.done());
        let r = ans.results(&reqs, None);
        assert!(r[0].is_ok());
        assert_eq!(r[1].as_ref().unwrap_err().errno(), Some(libc::EEXIST));
        assert_eq!(r[1].as_ref().unwrap_err().label(), "refused");
        assert!(r[2].is_ok());
    }

    #[test]
    fn requests_left_unanswered_fail_with_what_stopped_the_reading() {
        let (a, b) = (entry(1), entry(2));
        let reqs = [Request::Create(&a), Request::Delete(&b.orig)];
        let mut ans = Answers::new(vec![u32::MAX, 1]);
        assert!(ans.take(&Message::Ack {
            seq: u32::MAX,
            errno: 0
        }));
        let lost = io::Error::from(io::ErrorKind::WouldBlock);
        let r = ans.results(&reqs, Some(&lost));
        assert!(r[0].is_ok());
        let e = r[1].as_ref().unwrap_err();
        assert_eq!(e.label(), "io");
        assert_eq!(e.errno(), None);
        assert!(matches!(e, ConntrackError::Io { op: "delete", .. }));
        // Nothing asked, nothing answered.
        assert!(Answers::new(vec![]).done());
    }
}

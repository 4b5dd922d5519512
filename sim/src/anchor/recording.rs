//! Call recordings at the anchor, as the vendor's contact centre records calls: each call's
//! decoded audio as a WAV file (16 kHz, 16-bit PCM), the customer in the left channel and the
//! agent in the right when both are recorded (Amazon Connect's layout), from the moment the
//! agent's leg connects until the agent leaves — so a transfer's recording stops when the
//! transferring agent hangs up, as the vendor's guide says.
//!
//! The agent's side is what the anchor received from the agent's network, played as a receiver
//! plays it: a fixed [`PLAYOUT_DELAY`] jitter buffer on the anchor's own 20 ms frame clock,
//! Opus decoding, and the decoder's packet-loss concealment for every frame that was lost or
//! came later than its playout time. Loss, late packets and concealment are heard where they
//! happened. The customer's side is what the anchor sent (the test signal), decoded.
//!
//! In real time decoding runs on its own thread (`anchor-recorder`): the media thread hands it
//! each tick of its frame clock and each of the agent's payloads through a bounded queue and
//! never waits. What does not fit is dropped and counted (`recording_dropped`), never slowing
//! the media. In virtual time the same events are written as they happen, on the run's
//! thread (`Recorder::inline`), so a seed gives the same files.
//! [`Track`] is the sans-I/O part: ticks and packets in, PCM frames out.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock, mpsc};
use std::thread::JoinHandle;

use opus_pure::OpusDecoder;

use super::media::MediaCounters;

/// The run folder's subfolder the recordings go in.
pub const RECORDINGS: &str = "recordings";
/// The recordings' sample rate: wideband speech, as contact centres record it.
pub const RATE: u32 = 16_000;
/// Samples in one 20 ms frame at [`RATE`].
pub const FRAME: usize = 320;
/// The agent's side is played this many 20 ms frames after it was captured (60 ms): a packet
/// later than that is concealed, like a lost one.
pub const PLAYOUT_DELAY: i64 = 3;
/// RTP timestamp ticks in one 20 ms frame at Opus's 48 kHz clock.
const TICKS: i64 = 960;
/// Frames ahead of the capture point a packet may be held; beyond, it is dropped (a bogus
/// timestamp must not grow the buffer).
const AHEAD: i64 = 50;
/// Events the recorder's queue holds: about three seconds of 200 recorded calls.
const QUEUE: usize = 32_768;
/// The WAV header's sizes are brought up to date this often (frames), so a run that dies
/// mid-way leaves playable files.
const PATCH_EVERY: u64 = 250;

/// Which sides of a call a scenario records (`[recording] record = …`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sides {
    /// The agent's audio only (mono).
    Agent,
    /// The customer's audio only (mono).
    Customer,
    /// Both: customer left, agent right.
    Both,
}

impl Sides {
    /// As scenario files name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Agent => "agent",
            Self::Customer => "customer",
            Self::Both => "both",
        }
    }

    /// Channels in the WAV file.
    pub fn channels(self) -> u16 {
        if self == Self::Both { 2 } else { 1 }
    }
}

/// What to record and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recording {
    /// The folder the WAV files go in (created when recording starts).
    pub dir: PathBuf,
    /// The sides recorded.
    pub sides: Sides,
}

/// The WAV file of `call` (its `callContextToken`, the call id of its record) under a run
/// folder: `recordings/<call>.wav`, the name made safe for a file system.
pub fn file_name(call: &str) -> String {
    let safe: String = call
        .chars()
        .take(100)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let safe = safe.trim_start_matches('.');
    format!("{}.wav", if safe.is_empty() { "call" } else { safe })
}

/// The customer's side: the anchor's loop (`loadgen::audio`), decoded at [`RATE`] once. The
/// loop is decoded twice and the second pass kept, so the decoder's state has no start-up.
static CUSTOMER: LazyLock<Vec<[i16; FRAME]>> = LazyLock::new(|| {
    let frames = loadgen::audio::LOOP_FRAMES;
    let mut out = vec![[0i16; FRAME]; frames];
    if let Ok(mut decoder) = OpusDecoder::new(RATE as i32, 1) {
        for pass in 0..2 {
            for (i, frame) in out.iter_mut().enumerate() {
                let mut pcm = [0i16; FRAME];
                let payload = loadgen::audio::opus_frame(i as u64);
                if decoder.decode_s16(payload, FRAME, &mut pcm).is_ok() && pass == 1 {
                    *frame = pcm;
                }
            }
        }
    }
    out
});

/// One call's recording, without I/O: ticks of the anchor's frame clock and the agent's packets
/// in, one frame of each side out per tick once the playout delay has passed.
pub struct Track {
    decoder: OpusDecoder,
    /// Ticks so far: the slot being captured now.
    slot: i64,
    /// The first packet's RTP timestamp and the slot it arrived in.
    base: Option<(u32, i64)>,
    /// Packets waiting for their slot.
    pending: BTreeMap<i64, Vec<u8>>,
    /// The loop frame the anchor sent in each slot still to play (`None`: silent).
    customer: VecDeque<Option<u64>>,
    /// Frames of the agent's side decoded from a packet.
    pub decoded: u64,
    /// Frames of the agent's side concealed (lost, late, or undecodable).
    pub concealed: u64,
    /// Packets that came after their slot was played.
    pub late: u64,
}

impl std::fmt::Debug for Track {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Track")
            .field("slot", &self.slot)
            .field("decoded", &self.decoded)
            .field("concealed", &self.concealed)
            .finish_non_exhaustive()
    }
}

impl Track {
    /// A track with its own Opus decoder.
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            decoder: OpusDecoder::new(RATE as i32, 1).map_err(io::Error::other)?,
            slot: 0,
            base: None,
            pending: BTreeMap::new(),
            customer: VecDeque::new(),
            decoded: 0,
            concealed: 0,
            late: 0,
        })
    }

    /// The slot played at the last tick (`−1` before the first).
    fn played(&self) -> i64 {
        self.slot - PLAYOUT_DELAY - 1
    }

    /// A packet of the agent's (its RTP timestamp and Opus payload) arrived now.
    pub fn agent_packet(&mut self, timestamp: u32, payload: &[u8]) {
        let (ts0, slot0) = *self.base.get_or_insert((timestamp, self.slot));
        let frames = i64::from(timestamp.wrapping_sub(ts0) as i32) / TICKS;
        let slot = slot0 + frames;
        if slot <= self.played() {
            self.late += 1;
        } else if slot <= self.slot + AHEAD {
            self.pending.insert(slot, payload.to_vec());
        }
    }

    /// One tick of the anchor's 20 ms clock, in which it sent loop frame `customer` (`None`:
    /// it was silent). Once the playout delay has passed, fills one frame of each side and
    /// returns `true`.
    pub fn tick(
        &mut self,
        customer: Option<u64>,
        out_customer: &mut [i16; FRAME],
        out_agent: &mut [i16; FRAME],
    ) -> bool {
        // The customer's frame waits with the agent's, so the two stay aligned.
        self.customer.push_back(customer);
        self.slot += 1;
        let play = self.played();
        if play < 0 {
            return false;
        }
        *out_customer = match self.customer.pop_front().flatten() {
            Some(n) => CUSTOMER[(n % CUSTOMER.len() as u64) as usize],
            None => [0; FRAME],
        };
        self.agent_frame(play, out_agent);
        true
    }

    /// Plays out, at the end, the frames still held up to the last packet received (what is
    /// missing before it concealed; after it, the stream had ended).
    pub fn drain(&mut self, mut each: impl FnMut(&[i16; FRAME], &[i16; FRAME])) {
        let (mut c, mut a) = ([0i16; FRAME], [0i16; FRAME]);
        while self
            .pending
            .last_key_value()
            .is_some_and(|(&last, _)| last > self.played())
        {
            if self.tick(None, &mut c, &mut a) {
                each(&c, &a);
            }
        }
    }

    fn agent_frame(&mut self, play: i64, out: &mut [i16; FRAME]) {
        let Some((_, slot0)) = self.base else {
            *out = [0; FRAME];
            return;
        };
        if play < slot0 {
            *out = [0; FRAME];
            return;
        }
        // Anything older is past playing.
        while let Some(entry) = self.pending.first_entry() {
            if *entry.key() >= play {
                break;
            }
            entry.remove();
        }
        let packet = self.pending.remove(&play);
        let decoded = packet.as_deref().is_some_and(|p| {
            self.decoder
                .decode_s16(p, FRAME, out)
                .is_ok_and(|n| n == FRAME)
        });
        if decoded {
            self.decoded += 1;
        } else {
            // An empty packet runs the decoder's concealment.
            if self.decoder.decode_s16(&[], FRAME, out).is_err() {
                *out = [0; FRAME];
            }
            self.concealed += 1;
        }
    }
}

/// A WAV file (RIFF, 16-bit PCM) written as it goes; its sizes are patched now and then and at
/// the end.
struct Wav {
    file: BufWriter<File>,
    channels: u16,
    frames: u64,
    /// One frame's bytes, reused.
    bytes: Vec<u8>,
}

impl Wav {
    fn create(path: &Path, channels: u16) -> io::Result<Self> {
        let mut wav = Self {
            file: BufWriter::new(File::create(path)?),
            channels,
            frames: 0,
            bytes: Vec::with_capacity(FRAME * 4),
        };
        wav.header()?;
        Ok(wav)
    }

    /// The 44-byte header for what has been written so far.
    fn header(&mut self) -> io::Result<()> {
        let data = u32::try_from(self.frames * FRAME as u64 * u64::from(self.channels) * 2)
            .unwrap_or(u32::MAX - 36);
        let block = self.channels * 2;
        let f = &mut self.file;
        f.write_all(b"RIFF")?;
        f.write_all(&(36 + data).to_le_bytes())?;
        f.write_all(b"WAVEfmt ")?;
        f.write_all(&16u32.to_le_bytes())?;
        f.write_all(&1u16.to_le_bytes())?; // PCM
        f.write_all(&self.channels.to_le_bytes())?;
        f.write_all(&RATE.to_le_bytes())?;
        f.write_all(&(RATE * u32::from(block)).to_le_bytes())?;
        f.write_all(&block.to_le_bytes())?;
        f.write_all(&16u16.to_le_bytes())?;
        f.write_all(b"data")?;
        f.write_all(&data.to_le_bytes())
    }

    fn frame(
        &mut self,
        sides: Sides,
        customer: &[i16; FRAME],
        agent: &[i16; FRAME],
    ) -> io::Result<()> {
        let bytes = &mut self.bytes;
        bytes.clear();
        for i in 0..FRAME {
            match sides {
                Sides::Agent => bytes.extend_from_slice(&agent[i].to_le_bytes()),
                Sides::Customer => bytes.extend_from_slice(&customer[i].to_le_bytes()),
                Sides::Both => {
                    bytes.extend_from_slice(&customer[i].to_le_bytes());
                    bytes.extend_from_slice(&agent[i].to_le_bytes());
                }
            }
        }
        self.file.write_all(&self.bytes)?;
        self.frames += 1;
        if self.frames.is_multiple_of(PATCH_EVERY) {
            self.patch()?;
        }
        Ok(())
    }

    /// Brings the header's sizes up to date.
    fn patch(&mut self) -> io::Result<()> {
        self.file.seek(SeekFrom::Start(0))?;
        self.header()?;
        self.file.seek(SeekFrom::End(0))?;
        self.file.flush()
    }
}

/// What the media thread tells the recorder.
#[derive(Debug)]
pub(crate) enum Event {
    /// Leg `leg` connected: record it in the file `name`.
    Start { leg: u64, name: String },
    /// One tick of the leg's frame clock, with the loop frame it sent (`None`: silent).
    Tick { leg: u64, customer: Option<u64> },
    /// One of the agent's RTP packets: its timestamp and Opus payload.
    Agent {
        leg: u64,
        timestamp: u32,
        payload: Vec<u8>,
    },
    /// The leg closed (the agent left).
    Stop { leg: u64 },
}

/// Where the recorder's events go: a thread of its own (real time), or straight into the
/// files on the caller's thread (virtual time: deterministic, and nothing to drop).
#[derive(Debug)]
enum Sink {
    Thread {
        queue: Option<mpsc::SyncSender<Event>>,
        thread: Option<JoinHandle<()>>,
    },
    Inline(Box<std::cell::RefCell<Files>>),
}

/// The recorder: the files of the legs it records, behind its [`Sink`].
#[derive(Debug)]
pub(crate) struct Recorder {
    sink: Sink,
    counters: Arc<MediaCounters>,
    /// File names given so far: a second call with the same name gets its leg's number too.
    names: HashSet<String>,
}

impl Recorder {
    /// Creates `recording.dir` and starts the thread.
    pub(crate) fn start(recording: Recording, counters: Arc<MediaCounters>) -> io::Result<Self> {
        std::fs::create_dir_all(&recording.dir)?;
        LazyLock::force(&CUSTOMER);
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let thread_counters = counters.clone();
        let thread = std::thread::Builder::new()
            .name("anchor-recorder".into())
            .spawn(move || {
                let mut files = Files::new(recording, thread_counters);
                while let Ok(event) = rx.recv() {
                    files.handle(event);
                }
            })?;
        Ok(Self {
            sink: Sink::Thread {
                queue: Some(tx),
                thread: Some(thread),
            },
            counters,
            names: HashSet::new(),
        })
    }

    /// Creates `recording.dir`; every event is written as it is sent, on the sender's thread.
    pub(crate) fn inline(recording: Recording, counters: Arc<MediaCounters>) -> io::Result<Self> {
        std::fs::create_dir_all(&recording.dir)?;
        let files = Files::new(recording, counters.clone());
        Ok(Self {
            sink: Sink::Inline(Box::new(std::cell::RefCell::new(files))),
            counters,
            names: HashSet::new(),
        })
    }

    /// Starts recording leg `leg`, named `call`; returns its file's path in the run folder
    /// (`recordings/<name>.wav`).
    pub(crate) fn start_leg(&mut self, leg: u64, call: &str) -> String {
        let mut name = file_name(call);
        if !self.names.insert(name.clone()) {
            name = format!("{}-{leg}.wav", name.trim_end_matches(".wav"));
            self.names.insert(name.clone());
        }
        let path = format!("{RECORDINGS}/{name}");
        self.send(Event::Start { leg, name });
        path
    }

    /// Queues `event`, or drops and counts it when the queue is full.
    pub(crate) fn send(&self, event: Event) {
        match &self.sink {
            Sink::Thread { queue: Some(q), .. } => {
                if q.try_send(event).is_err() {
                    self.counters
                        .recording_dropped
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
            Sink::Thread { queue: None, .. } => {}
            Sink::Inline(files) => files.borrow_mut().handle(event),
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        // A closed queue ends the thread once it has finished every open file.
        if let Sink::Thread { queue, thread } = &mut self.sink {
            *queue = None;
            if let Some(t) = thread.take() {
                let _ = t.join();
            }
        }
    }
}

struct Open {
    track: Track,
    wav: Wav,
}

/// The open recordings, and what to do with each event.
struct Files {
    recording: Recording,
    counters: Arc<MediaCounters>,
    open: HashMap<u64, Open>,
    /// Scratch frames: the customer's side, the agent's.
    frames: ([i16; FRAME], [i16; FRAME]),
}

impl std::fmt::Debug for Files {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Files")
            .field("dir", &self.recording.dir)
            .field("open", &self.open.len())
            .finish()
    }
}

impl Files {
    fn new(recording: Recording, counters: Arc<MediaCounters>) -> Self {
        Self {
            recording,
            counters,
            open: HashMap::new(),
            frames: ([0; FRAME], [0; FRAME]),
        }
    }

    fn failed(&mut self, leg: u64) {
        self.open.remove(&leg);
        self.counters
            .recording_failed
            .fetch_add(1, Ordering::Relaxed);
    }

    fn handle(&mut self, event: Event) {
        let sides = self.recording.sides;
        match event {
            Event::Start { leg, name } => {
                match (
                    Track::new(),
                    Wav::create(&self.recording.dir.join(&name), sides.channels()),
                ) {
                    (Ok(track), Ok(wav)) => {
                        self.open.insert(leg, Open { track, wav });
                        self.counters.recordings.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => self.failed(leg),
                }
            }
            Event::Tick { leg, customer } => {
                let (c, a) = &mut self.frames;
                if let Some(o) = self.open.get_mut(&leg)
                    && o.track.tick(customer, c, a)
                    && o.wav.frame(sides, c, a).is_err()
                {
                    self.failed(leg);
                }
            }
            Event::Agent {
                leg,
                timestamp,
                payload,
            } => {
                if let Some(o) = self.open.get_mut(&leg) {
                    o.track.agent_packet(timestamp, &payload);
                }
            }
            Event::Stop { leg } => {
                if let Some(o) = self.open.remove(&leg) {
                    finish(sides, o, &self.counters);
                }
            }
        }
    }
}

impl Drop for Files {
    /// Finishes every file still open (the run ended with its leg up).
    fn drop(&mut self) {
        for (_, o) in self.open.drain() {
            finish(self.recording.sides, o, &self.counters);
        }
    }
}

/// Plays out what the track still holds, closes the file, and counts what it concealed.
fn finish(sides: Sides, mut o: Open, counters: &MediaCounters) {
    let mut result = Ok(());
    o.track.drain(|c, a| {
        if result.is_ok() {
            result = o.wav.frame(sides, c, a);
        }
    });
    counters
        .recording_concealed
        .fetch_add(o.track.concealed, Ordering::Relaxed);
    if result.and_then(|()| o.wav.patch()).is_err() {
        counters.recording_failed.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The agent's side of `frames` frames of the loop, each packet arriving in the slot it
    /// was sent in (`late_by(k)` frames later) unless `lost(k)`: one frame per tick.
    fn play(
        frames: u64,
        lost: impl Fn(u64) -> bool,
        late_by: impl Fn(u64) -> i64,
    ) -> (Track, Vec<[i16; FRAME]>) {
        let mut track = Track::new().unwrap();
        let mut out = Vec::new();
        let (mut c, mut a) = ([0i16; FRAME], [0i16; FRAME]);
        // (slot it arrives in, frame)
        let mut arrivals: Vec<(i64, u64)> = (0..frames)
            .filter(|&k| !lost(k))
            .map(|k| (k as i64 + late_by(k), k))
            .collect();
        arrivals.sort();
        let mut next = arrivals.iter().peekable();
        // The clock ticks until the last frame has played.
        for slot in 0..frames as i64 + PLAYOUT_DELAY {
            while let Some(&&(_, k)) = next.peek().filter(|(at, _)| *at == slot) {
                let ts = (k as u32).wrapping_mul(960).wrapping_add(12345);
                track.agent_packet(ts, loadgen::audio::opus_frame(k));
                next.next();
            }
            if track.tick(Some(slot as u64), &mut c, &mut a) {
                out.push(a);
            }
        }
        (track, out)
    }

    fn energy(f: &[i16]) -> f64 {
        f.iter().map(|&s| f64::from(s).powi(2)).sum()
    }

    #[test]
    fn concealment_is_where_the_losses_were() {
        // 10 % of 500 frames lost at random (seeded), none late.
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let lost: Vec<bool> = (0..500)
            .map(|_| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng.is_multiple_of(10)
            })
            .collect();
        let (clean, reference) = play(500, |_| false, |_| 0);
        let (lossy, heard) = play(500, |k| lost[k as usize], |_| 0);
        assert_eq!(clean.concealed, 0);
        let n_lost = lost.iter().filter(|&&l| l).count() as u64;
        assert_eq!(lossy.concealed, n_lost, "every lost frame is concealed");
        assert_eq!(lossy.decoded, 500 - n_lost);
        assert_eq!(heard.len(), reference.len());
        // Where a frame was lost, what is heard is not what was said (concealment: at least
        // a tenth of the frame's energy differs, measured); where none was lost in the 12
        // frames before, it is what was said (the decoder's state takes up to about 12
        // frames to settle after a concealed one: measured, errors fall below 1 %).
        const SETTLE: usize = 12;
        let mut checked = (0, 0);
        for (k, (h, r)) in heard.iter().zip(&reference).enumerate() {
            if energy(r) < 1e6 {
                continue; // a pause of the test signal: concealment of silence is silence
            }
            let diff: Vec<i16> = h.iter().zip(r).map(|(a, b)| a.saturating_sub(*b)).collect();
            let error = energy(&diff) / energy(r);
            if lost[k] {
                assert!(
                    error > 0.05,
                    "frame {k} was lost but sounds as sent ({error})"
                );
                checked.0 += 1;
            } else if k >= SETTLE && !lost[k - SETTLE..k].iter().any(|&l| l) {
                assert!(error < 0.02, "frame {k} arrived but sounds wrong ({error})");
                checked.1 += 1;
            }
        }
        assert!(checked.0 > 20 && checked.1 > 100, "{checked:?}");
    }

    #[test]
    fn a_packet_later_than_the_playout_delay_is_concealed_and_counted() {
        // Frame 10 arrives 5 frames late (past the 3-frame delay), frame 20 two frames late
        // (within it).
        let late = |k: u64| match k {
            10 => 5,
            20 => 2,
            _ => 0,
        };
        let (track, heard) = play(100, |_| false, late);
        assert_eq!(track.late, 1);
        assert_eq!(track.concealed, 1);
        assert_eq!(track.decoded, 99);
        assert_eq!(heard.len(), 100);
    }

    #[test]
    fn file_names_are_safe_and_a_wav_header_describes_its_data() {
        assert_eq!(file_name("c17"), "c17.wav");
        assert_eq!(file_name("../../etc/passwd"), "_.._etc_passwd.wav");
        assert_eq!(file_name(""), "call.wav");
        assert_eq!(file_name("a b/c"), "a_b_c.wav");
        let dir = std::env::temp_dir().join(format!("sim-wav-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.wav");
        let mut wav = Wav::create(&path, 2).unwrap();
        let (c, a) = ([1i16; FRAME], [-2i16; FRAME]);
        for _ in 0..3 {
            wav.frame(Sides::Both, &c, &a).unwrap();
        }
        wav.patch().unwrap();
        drop(wav);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 44 + 3 * FRAME * 4);
        assert_eq!(&bytes[0..4], b"RIFF");
        assert_eq!(
            u32::from_le_bytes(bytes[4..8].try_into().unwrap()),
            36 + 3 * 1280
        );
        assert_eq!(u16::from_le_bytes([bytes[22], bytes[23]]), 2, "channels");
        assert_eq!(u32::from_le_bytes(bytes[24..28].try_into().unwrap()), RATE);
        assert_eq!(
            u32::from_le_bytes(bytes[40..44].try_into().unwrap()),
            3 * 1280
        );
        // Customer left, agent right.
        assert_eq!(i16::from_le_bytes([bytes[44], bytes[45]]), 1);
        assert_eq!(i16::from_le_bytes([bytes[46], bytes[47]]), -2);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

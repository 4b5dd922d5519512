//! A conference at the anchor: the agent, the customer and a third party, each hearing a mix
//! of the other two, as a vendor's conference bridge mixes them.
//!
//! The customer and the third party are the anchor's own (their phones are on the vendor's
//! side of the call), each sending its test tone ([`loadgen::audio::CUSTOMER_TONE`],
//! [`loadgen::audio::THIRD_PARTY_TONE`]); the agent's audio is what its leg receives, decoded.
//! Every 20 ms the bridge mixes: customer + third party, Opus-encoded, to the agent on its
//! leg; agent + third party to the customer, and agent + customer to the third party, each
//! encoded and decoded again as that party's phone would, and measured there
//! ([`loadgen::audio::ToneMeter`]): what each party heard is in the call's record.

use std::collections::VecDeque;

use loadgen::audio::{
    CUSTOMER_TONE, FRAME_SAMPLES, SAMPLE_RATE, THIRD_PARTY_TONE, ToneMeter, encode_frame, encoder,
    tone,
};
use opus_pure::{OpusDecoder, OpusEncoder};

/// Decoded frames of the agent's waiting to be mixed, at most: a jitter buffer of 60 ms (a
/// longer queue is late audio, dropped from its oldest).
const AGENT_QUEUE: usize = 3;
/// Frames a party's phone decodes before it is measured (its codec settling, 200 ms).
const SETTLE: u32 = 10;

/// One party at the anchor: its phone's codec, and what it heard.
struct Phone {
    encoder: Option<OpusEncoder>,
    decoder: Option<OpusDecoder>,
    meter: ToneMeter,
    settle: u32,
    pcm: Vec<f32>,
}

impl Phone {
    fn new() -> Self {
        Self {
            encoder: encoder(),
            decoder: OpusDecoder::new(SAMPLE_RATE as i32, 1).ok(),
            meter: ToneMeter::conference(),
            settle: SETTLE,
            pcm: vec![0.0; 5760],
        }
    }

    /// The party hears `mix`: sent to it in Opus, decoded by its phone, measured.
    fn hear(&mut self, mix: &[f32]) {
        let payload = encode_frame(self.encoder.as_mut(), mix);
        let Some(decoder) = &mut self.decoder else {
            return;
        };
        if let Ok(n) = decoder.decode(&payload, self.pcm.len(), &mut self.pcm)
            && n == FRAME_SAMPLES
        {
            if self.settle > 0 {
                self.settle -= 1;
            } else {
                self.meter.frame(&self.pcm[..n]);
            }
        }
    }
}

/// The bridge of one call's conference.
pub(crate) struct Bridge {
    /// The agent's stream, decoded.
    agent_decoder: Option<OpusDecoder>,
    agent_frames: VecDeque<Vec<f32>>,
    /// What the agent hears, encoded for its leg.
    to_agent: Option<OpusEncoder>,
    customer: Phone,
    third_party: Phone,
    /// The tones' sample clock.
    sample: u64,
    decoded: Vec<f32>,
}

impl std::fmt::Debug for Bridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bridge")
            .field("sample", &self.sample)
            .finish_non_exhaustive()
    }
}

impl Bridge {
    pub(crate) fn new() -> Self {
        Self {
            agent_decoder: OpusDecoder::new(SAMPLE_RATE as i32, 1).ok(),
            agent_frames: VecDeque::with_capacity(AGENT_QUEUE + 1),
            to_agent: encoder(),
            customer: Phone::new(),
            third_party: Phone::new(),
            sample: 0,
            decoded: vec![0.0; 5760],
        }
    }

    /// An Opus frame of the agent's arrived.
    pub(crate) fn agent_frame(&mut self, payload: &[u8]) {
        let Some(decoder) = &mut self.agent_decoder else {
            return;
        };
        if let Ok(n) = decoder.decode(payload, self.decoded.len(), &mut self.decoded)
            && n == FRAME_SAMPLES
        {
            if self.agent_frames.len() == AGENT_QUEUE {
                self.agent_frames.pop_front();
            }
            self.agent_frames.push_back(self.decoded[..n].to_vec());
        }
    }

    /// Mixes the next 20 ms: the customer and the third party hear theirs, and the agent's
    /// is returned, an Opus payload for its leg.
    pub(crate) fn mix(&mut self) -> Vec<u8> {
        let mut customer = vec![0f32; FRAME_SAMPLES];
        let mut third = vec![0f32; FRAME_SAMPLES];
        tone(CUSTOMER_TONE, self.sample, &mut customer);
        tone(THIRD_PARTY_TONE, self.sample, &mut third);
        self.sample += FRAME_SAMPLES as u64;
        // A frame the agent's stream did not bring in time is silence in the mix.
        let agent = self
            .agent_frames
            .pop_front()
            .unwrap_or_else(|| vec![0.0; FRAME_SAMPLES]);
        let sum = |a: &[f32], b: &[f32]| -> Vec<f32> {
            a.iter()
                .zip(b)
                .map(|(x, y)| (x + y).clamp(-1.0, 1.0))
                .collect()
        };
        self.customer.hear(&sum(&agent, &third));
        self.third_party.hear(&sum(&agent, &customer));
        encode_frame(self.to_agent.as_mut(), &sum(&customer, &third))
    }

    /// What the customer and the third party heard.
    pub(crate) fn heard(&self) -> (reports::Heard, reports::Heard) {
        (self.customer.meter.heard(), self.third_party.meter.heard())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use loadgen::audio::{AGENT_TONE, Signal, frame};

    #[test]
    fn each_party_hears_the_other_two_and_not_itself() {
        let mut bridge = Bridge::new();
        let mut agent_decoder = OpusDecoder::new(SAMPLE_RATE as i32, 1).unwrap();
        let mut agent_heard = ToneMeter::conference();
        let mut pcm = vec![0f32; 5760];
        for f in 0..100 {
            bridge.agent_frame(frame(Signal::Tone(AGENT_TONE), f));
            let to_agent = bridge.mix();
            let n = agent_decoder.decode(&to_agent, 5760, &mut pcm).unwrap();
            if f >= 10 {
                agent_heard.frame(&pcm[..n]);
            }
        }
        let (customer, third) = bridge.heard();
        let agent = agent_heard.heard();
        for (who, heard, own) in [
            ("agent", agent, agent.agent_db),
            ("customer", customer, customer.customer_db),
            ("third party", third, third.third_party_db),
        ] {
            let others: Vec<f64> = [heard.agent_db, heard.customer_db, heard.third_party_db]
                .into_iter()
                .filter(|db| *db != own)
                .collect();
            assert_eq!(others.len(), 2, "{who}: {heard:?}");
            // Each tone is sent at −20 dBFS; through one or two Opus passes it stays within a
            // few dB, and the party's own is absent (below the codec's noise).
            for db in others {
                assert!((db + 20.0).abs() < 4.0, "{who}: {heard:?}");
            }
            assert!(own < -45.0, "{who} hears itself: {heard:?}");
            assert_eq!(heard.frames, 90, "{who}");
        }
    }
}

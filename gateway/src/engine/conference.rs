//! Conferences: N-way mix-minus, where every member hears everyone but themselves.
//!
//! A conference node has `members` input ports (`in1..inN`) and as many outputs
//! (`out1..outN`). Output k carries the sum of all inputs except input k. Computing
//! `total - own` is O(N) per block instead of the O(N²) of one patch per pair. Outputs
//! are computed from the inputs of the previous block (see the engine's three phases),
//! which adds 1 ms.

use super::Node;

/// The mix-minus node.
pub struct ConferenceNode {
    members: usize,
    /// Next block's outputs, `members * block` samples.
    mixes: Vec<f32>,
    /// Scratch for the sum of all inputs, `block` samples.
    total: Vec<f32>,
}

impl ConferenceNode {
    /// A conference with room for `members` members, for blocks of `block` samples.
    pub fn new(members: usize, block: usize) -> ConferenceNode {
        ConferenceNode {
            members,
            mixes: vec![0.0; members * block],
            total: vec![0.0; block],
        }
    }
}

impl Node for ConferenceNode {
    fn produce(&mut self, outputs: &mut [f32], _block: usize) {
        let n = outputs.len().min(self.mixes.len());
        outputs[..n].copy_from_slice(&self.mixes[..n]);
    }

    fn consume(&mut self, inputs: &[f32], block: usize) {
        if self.total.len() != block || inputs.len() < self.members * block {
            return;
        }
        self.total.fill(0.0);
        for member in inputs.chunks_exact(block).take(self.members) {
            for (t, s) in self.total.iter_mut().zip(member) {
                *t += *s;
            }
        }
        for (mix, own) in self
            .mixes
            .chunks_exact_mut(block)
            .zip(inputs.chunks_exact(block))
        {
            for ((m, t), o) in mix.iter_mut().zip(&self.total).zip(own) {
                *m = (t - o).clamp(-1.0, 1.0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_member_hears_the_others_but_not_themselves() {
        let mut conf = ConferenceNode::new(3, 2);
        // Members say 0.1, 0.2, 0.4.
        conf.consume(&[0.1, 0.1, 0.2, 0.2, 0.4, 0.4], 2);
        let mut out = [0.0f32; 6];
        conf.produce(&mut out, 2);
        let expected = [0.6, 0.6, 0.5, 0.5, 0.3, 0.3];
        for (o, e) in out.iter().zip(expected) {
            assert!((o - e).abs() < 1e-6, "{out:?}");
        }
    }

    #[test]
    fn a_lone_member_hears_silence() {
        let mut conf = ConferenceNode::new(4, 2);
        conf.consume(&[0.7, -0.7, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], 2);
        let mut out = [1.0f32; 8];
        conf.produce(&mut out, 2);
        assert_eq!(&out[..2], &[0.0, 0.0]);
        assert_eq!(&out[2..4], &[0.7, -0.7]);
    }
}

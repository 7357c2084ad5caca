//! Hashed timing wheel with 1 s ticks for handshake, auth, heartbeat and
//! close-linger deadlines. One entry per connection (8 bytes); no timer
//! syscall per connection. A connection keeps its `deadline` and the tick
//! its entry fires at (`timer_at`); moving a deadline later costs nothing
//! (the entry is re-filed when it fires), moving it earlier adds an entry
//! and the old one is recognised as stale when it fires.

/// Slots in the wheel; deadlines further out are re-filed when they fire.
pub const SLOTS: u32 = 64;

pub struct Wheel {
    slots: Vec<Vec<(u32, u32)>>,
    /// Last tick processed.
    now: u32,
    len: usize,
}

impl Default for Wheel {
    fn default() -> Self {
        Wheel {
            slots: (0..SLOTS).map(|_| Vec::new()).collect(),
            now: 0,
            len: 0,
        }
    }
}

#[allow(clippy::len_without_is_empty)]
impl Wheel {
    /// Files `(key, gen)` to fire at `deadline` (clamped into the wheel's
    /// horizon); returns the tick it will fire at (store it as `timer_at`).
    pub fn schedule(&mut self, key: u32, gen: u32, deadline: u32) -> u32 {
        let at = deadline.clamp(self.now + 1, self.now + SLOTS - 1);
        self.slots[(at % SLOTS) as usize].push((key, gen));
        self.len += 1;
        at
    }

    /// Advances to tick `now`, appending every entry that fired to `out`
    /// with its tick.
    pub fn advance(&mut self, now: u32, out: &mut Vec<(u32, u32, u32)>) {
        while self.now < now {
            self.now += 1;
            let t = self.now;
            let slot = &mut self.slots[(t % SLOTS) as usize];
            self.len -= slot.len();
            out.extend(slot.drain(..).map(|(k, g)| (k, g, t)));
            if slot.capacity() > 64 && slot.capacity() > 4 * out.len().max(1) {
                slot.shrink_to_fit();
            }
        }
    }

    pub fn now(&self) -> u32 {
        self.now
    }

    /// Entries filed (live and stale).
    pub fn len(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_at_deadline_and_clamps() {
        let mut w = Wheel::default();
        assert_eq!(w.schedule(1, 0, 3), 3);
        assert_eq!(w.schedule(2, 0, 500), SLOTS - 1);
        assert_eq!(w.schedule(3, 0, 0), 1);
        let mut out = Vec::new();
        w.advance(2, &mut out);
        assert_eq!(out, vec![(3, 0, 1)]);
        out.clear();
        w.advance(3, &mut out);
        assert_eq!(out, vec![(1, 0, 3)]);
        assert_eq!(w.len(), 1);
    }
}

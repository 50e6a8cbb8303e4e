//! Stop strings over a token stream: text is released as soon as it can no longer turn out
//! to be the start of a stop string, and a stop string itself is never released.

#[derive(Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    /// Text received but not yet released: it could still begin a stop string.
    held: String,
}

/// What to do with a new piece of text.
#[derive(Debug, PartialEq, Eq)]
pub struct Release {
    pub text: String,
    pub stopped: bool,
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            held: String::new(),
        }
    }

    pub fn push(&mut self, delta: &str) -> Release {
        self.held.push_str(delta);
        // The earliest complete stop string ends generation; text before it is released.
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min()
        {
            let text = self.held[..at].to_string();
            self.held.clear();
            return Release {
                text,
                stopped: true,
            };
        }
        let keep = self.longest_partial_match();
        let text = self.held[..self.held.len() - keep].to_string();
        self.held.drain(..self.held.len() - keep);
        Release {
            text,
            stopped: false,
        }
    }

    /// The held text, when generation ends for another reason.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Length of the longest suffix of `held` that is a proper prefix of some stop string.
    fn longest_partial_match(&self) -> usize {
        let held = self.held.as_str();
        let mut best = 0;
        for stop in &self.stops {
            for (end, _) in stop.char_indices().skip(1) {
                if end > best && held.ends_with(&stop[..end]) {
                    best = end;
                }
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], deltas: &[&str]) -> (String, bool) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for d in deltas {
            let r = m.push(d);
            out.push_str(&r.text);
            if r.stopped {
                return (out, true);
            }
        }
        out.push_str(&m.flush());
        (out, false)
    }

    #[test]
    fn stop_spanning_tokens() {
        assert_eq!(
            run(&["Observation:"], &["Thought: x\nObs", "erva", "tion: y"]),
            ("Thought: x\n".into(), true)
        );
    }

    #[test]
    fn partial_match_is_held_then_released() {
        let mut m = StopMatcher::new(vec!["[INST]".into()]);
        assert_eq!(
            m.push("a ["),
            Release {
                text: "a ".into(),
                stopped: false
            }
        );
        assert_eq!(
            m.push("b"),
            Release {
                text: "[b".into(),
                stopped: false
            }
        );
    }

    #[test]
    fn earliest_of_several_and_prefix_of_another() {
        assert_eq!(run(&["ab", "abc"], &["xab", "c"]), ("x".into(), true));
        assert_eq!(
            run(&["world", "lo"], &["hello world"]),
            ("hel".into(), true)
        );
        assert_eq!(
            run(&["\n\n", "END"], &["a\n", "b\n", "\nEND"]),
            ("a\nb".into(), true)
        );
    }

    #[test]
    fn unicode_and_no_match() {
        assert_eq!(run(&["日本"], &["今日は日", "本"]), ("今日は".into(), true));
        assert_eq!(
            run(&["zzz"], &["no ", "stop ", "here z"]),
            ("no stop here z".into(), false)
        );
    }
}

//! What a console session does once its stream has ended: reattach (to the guest's new
//! host after a live migration, or to the same host after the connection was lost, e.g. an
//! agent restart), wait (the switchover is not finished, the cluster has not caught up, the
//! agent is not back yet), or end (the guest stopped, crashed or left the cluster).
use vmove_api::{ConsoleEnd, ConsoleReplay, GuestState};

/// How the stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The agent ended it, saying why.
    Agent(ConsoleEnd),
    /// The connection closed without an `end` line.
    Lost,
}

/// Where the guest is now: its host, and its state there (`None`: that agent could not be
/// asked or does not know the guest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The host.
    pub host: String,
    /// The guest's state on it.
    pub state: Option<GuestState>,
}

/// The next step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Attach to `host` with `replay`; `moved`: the guest is on another host than before.
    Reattach {
        /// Where.
        host: String,
        /// From where in that host's log.
        replay: ConsoleReplay,
        /// Whether it is a new host.
        moved: bool,
    },
    /// Ask again a little later.
    Wait,
    /// The session is over, for this reason.
    Exit(String),
}

fn live(s: Option<GuestState>) -> bool {
    matches!(s, Some(GuestState::Running | GuestState::Paused))
}

/// Decides what to do for guest `guest` whose session on host `on` ended as `ended` after
/// the client had seen that host's log up to `offset`, given where the guest is now
/// (`None`: not in the cluster any more).
///
/// On a new host the client replays that host's log from its start: a migration target's
/// run directory is new (a guest's old one is moved aside when it leaves a host), so its
/// `serial.log` holds exactly what the guest wrote since it arrived. On the same host it
/// replays from what it had seen.
pub fn decide(guest: &str, on: &str, offset: u64, ended: Ended, found: Option<&Found>) -> Next {
    let Some(f) = found else {
        return Next::Exit(format!("guest {guest} is no longer in the cluster"));
    };
    let state = f.state.map(|s| format!("{s:?}").to_lowercase()).unwrap_or_default();
    if f.host != on {
        if live(f.state) {
            return Next::Reattach { host: f.host.clone(), replay: ConsoleReplay::From(0), moved: true };
        }
        return match (f.state, ended) {
            // A guest that left with a live migration is about to run there.
            (_, Ended::Agent(ConsoleEnd::Moved)) => Next::Wait,
            (Some(GuestState::Stopped | GuestState::Crashed), _) => {
                Next::Exit(format!("guest {guest} is {state} on {}", f.host))
            }
            _ => Next::Wait,
        };
    }
    match ended {
        Ended::Lost if live(f.state) => Next::Reattach { host: on.to_string(), replay: ConsoleReplay::From(offset), moved: false },
        Ended::Lost => match f.state {
            Some(GuestState::Stopped | GuestState::Crashed) => Next::Exit(format!("guest {guest} is {state} on {on}")),
            _ => Next::Wait,
        },
        // The cluster still names the old host: the move is being recorded.
        Ended::Agent(ConsoleEnd::Moved | ConsoleEnd::Gone) => Next::Wait,
        Ended::Agent(ConsoleEnd::Stopped) => Next::Exit(format!("guest {guest} stopped")),
        Ended::Agent(ConsoleEnd::Crashed) => Next::Exit(format!("guest {guest} crashed")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use GuestState::*;

    fn at(host: &str, s: Option<GuestState>) -> Option<Found> {
        Some(Found { host: host.into(), state: s })
    }

    const MOVED: Ended = Ended::Agent(ConsoleEnd::Moved);

    #[test]
    fn a_live_move_reattaches_to_the_target_from_the_start_of_its_log() {
        let n = decide("vm1", "host1", 500, MOVED, at("host2", Some(Running)).as_ref());
        assert_eq!(n, Next::Reattach { host: "host2".into(), replay: ConsoleReplay::From(0), moved: true });
        // Paused on the target (post-copy, a debugger): still the console to follow.
        assert!(matches!(decide("vm1", "host1", 0, MOVED, at("host2", Some(Paused)).as_ref()), Next::Reattach { moved: true, .. }));
    }

    #[test]
    fn waits_while_the_move_is_being_finished() {
        // The cluster has not recorded the move yet.
        assert_eq!(decide("vm1", "host1", 5, MOVED, at("host1", Some(Stopped)).as_ref()), Next::Wait);
        assert_eq!(decide("vm1", "host1", 5, MOVED, at("host1", None).as_ref()), Next::Wait);
        // The target has not resumed it yet, or cannot be asked right now.
        assert_eq!(decide("vm1", "host1", 5, MOVED, at("host2", Some(Incoming)).as_ref()), Next::Wait);
        assert_eq!(decide("vm1", "host1", 5, MOVED, at("host2", None).as_ref()), Next::Wait);
        assert_eq!(decide("vm1", "host1", 5, MOVED, at("host2", Some(Stopped)).as_ref()), Next::Wait);
        assert_eq!(decide("vm1", "host1", 5, Ended::Agent(ConsoleEnd::Gone), at("host1", None).as_ref()), Next::Wait);
    }

    #[test]
    fn a_lost_connection_reattaches_where_it_was_from_what_was_seen() {
        let n = decide("vm1", "host1", 1234, Ended::Lost, at("host1", Some(Running)).as_ref());
        assert_eq!(n, Next::Reattach { host: "host1".into(), replay: ConsoleReplay::From(1234), moved: false });
        // The agent is restarting: wait for it.
        assert_eq!(decide("vm1", "host1", 1234, Ended::Lost, at("host1", None).as_ref()), Next::Wait);
        // Lost because the guest moved meanwhile: follow it.
        assert!(matches!(decide("vm1", "host1", 9, Ended::Lost, at("host3", Some(Running)).as_ref()), Next::Reattach { moved: true, .. }));
    }

    #[test]
    fn stopped_crashed_or_removed_guests_end_the_session() {
        let e = |ended, f: Option<Found>| decide("vm1", "host1", 0, ended, f.as_ref());
        assert_eq!(e(Ended::Agent(ConsoleEnd::Stopped), at("host1", Some(Stopped))), Next::Exit("guest vm1 stopped".into()));
        assert_eq!(e(Ended::Agent(ConsoleEnd::Crashed), at("host1", Some(Crashed))), Next::Exit("guest vm1 crashed".into()));
        assert_eq!(e(Ended::Lost, at("host1", Some(Stopped))), Next::Exit("guest vm1 is stopped on host1".into()));
        // An offline move: stopped, now defined (stopped) on the target.
        assert_eq!(e(Ended::Agent(ConsoleEnd::Stopped), at("host2", Some(Stopped))), Next::Exit("guest vm1 is stopped on host2".into()));
        assert_eq!(e(MOVED, None), Next::Exit("guest vm1 is no longer in the cluster".into()));
    }
}

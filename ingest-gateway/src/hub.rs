//! Which agents have a live WebSocket on this gateway instance.
//!
//! Each connected agent has one bounded queue of [`ServerMessage`]s that its socket task
//! drains. A second connection of the same agent replaces the first (the old socket is
//! told why and closes); a deactivation closes it the same way.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use fleet_schemas::api::ServerMessage;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

/// Why the gateway closes an agent's socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The same agent connected again; the newer socket wins.
    Replaced,
    /// The agent was deactivated.
    Deactivated,
}

impl CloseReason {
    /// Text of the WebSocket close frame.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Replaced => "replaced by a newer connection of this agent",
            CloseReason::Deactivated => "agent deactivated",
        }
    }
}

#[derive(Debug)]
struct Slot {
    conn: u64,
    tx: mpsc::Sender<ServerMessage>,
    close: Option<oneshot::Sender<CloseReason>>,
}

/// The receiving end of one registered socket.
#[derive(Debug)]
pub struct Connection {
    /// Number of this connection (to unregister only itself).
    pub conn: u64,
    /// Messages to send to the agent.
    pub outbox: mpsc::Receiver<ServerMessage>,
    /// Fires when the gateway wants this socket closed.
    pub closed: oneshot::Receiver<CloseReason>,
}

/// Agent id → the live socket's queue.
#[derive(Debug)]
pub struct Hub {
    slots: Mutex<HashMap<String, Slot>>,
    next: AtomicU64,
    capacity: usize,
}

impl Hub {
    /// A hub whose per-socket queues hold `capacity` messages.
    pub fn new(capacity: usize) -> Hub {
        Hub {
            slots: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            capacity: capacity.max(1),
        }
    }

    /// Registers a new socket of `agent_id`, replacing (and closing) an older one.
    pub fn connect(&self, agent_id: &str) -> Connection {
        let (tx, outbox) = mpsc::channel(self.capacity);
        let (close_tx, closed) = oneshot::channel();
        let conn = self.next.fetch_add(1, Ordering::Relaxed);
        let old = self.slots.lock().insert(
            agent_id.to_owned(),
            Slot {
                conn,
                tx,
                close: Some(close_tx),
            },
        );
        if let Some(mut old) = old {
            if let Some(c) = old.close.take() {
                let _ = c.send(CloseReason::Replaced);
            }
            tracing::info!(%agent_id, "Agent connected again; the older socket is closed.");
        }
        Connection {
            conn,
            outbox,
            closed,
        }
    }

    /// Unregisters connection `conn` of `agent_id` (a newer one stays).
    pub fn disconnect(&self, agent_id: &str, conn: u64) {
        let mut slots = self.slots.lock();
        if slots.get(agent_id).is_some_and(|s| s.conn == conn) {
            slots.remove(agent_id);
        }
    }

    /// Queues a message for the agent's socket on this instance. False if it has none
    /// here, or its queue is full.
    pub fn push(&self, agent_id: &str, msg: ServerMessage) -> bool {
        let slots = self.slots.lock();
        let Some(slot) = slots.get(agent_id) else {
            return false;
        };
        match slot.tx.try_send(msg) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(%agent_id, "Agent's send queue is full; message not queued.");
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Closes the agent's socket on this instance, if any; true if there was one.
    pub fn close(&self, agent_id: &str, reason: CloseReason) -> bool {
        let slot = self.slots.lock().remove(agent_id);
        match slot {
            Some(mut s) => {
                if let Some(c) = s.close.take() {
                    let _ = c.send(reason);
                }
                true
            }
            None => false,
        }
    }

    /// Whether the agent has a socket on this instance.
    pub fn is_connected(&self, agent_id: &str) -> bool {
        self.slots.lock().contains_key(agent_id)
    }

    /// Agents with a socket on this instance.
    pub fn agents(&self) -> Vec<String> {
        self.slots.lock().keys().cloned().collect()
    }

    /// Number of sockets.
    pub fn len(&self) -> usize {
        self.slots.lock().len()
    }

    /// Whether no agent is connected.
    pub fn is_empty(&self) -> bool {
        self.slots.lock().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(id: u64) -> ServerMessage {
        ServerMessage::Ack {
            id,
            accepted: 1,
            rejected: Vec::new(),
        }
    }

    #[tokio::test]
    async fn push_reaches_the_live_socket_and_a_second_connection_replaces_the_first() {
        let hub = Hub::new(4);
        assert!(!hub.push("a", ack(1)), "nobody connected");
        let mut first = hub.connect("a");
        assert!(hub.push("a", ack(1)));
        assert_eq!(first.outbox.recv().await, Some(ack(1)));
        let mut second = hub.connect("a");
        assert_eq!(first.closed.await, Ok(CloseReason::Replaced));
        assert!(hub.push("a", ack(2)));
        assert_eq!(second.outbox.recv().await, Some(ack(2)));
        // The old socket unregistering does not remove the new one.
        hub.disconnect("a", first.conn);
        assert!(hub.is_connected("a"));
        assert!(hub.close("a", CloseReason::Deactivated));
        assert_eq!(second.closed.await, Ok(CloseReason::Deactivated));
        assert!(!hub.is_connected("a"));
    }

    #[tokio::test]
    async fn a_full_queue_refuses() {
        let hub = Hub::new(1);
        let _c = hub.connect("a");
        assert!(hub.push("a", ack(1)));
        assert!(!hub.push("a", ack(2)));
    }
}

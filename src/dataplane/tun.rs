//! The TUN device: opens its queues and reads/writes whole IP packets. Nothing else in
//! the crate knows how the queues were opened; callers get packets and the checksum state
//! they arrive in. (Today: tokio-tun, no virtio-net header, so every checksum is complete.
//! The performance work swaps the opening for `IFF_VNET_HDR` queues behind this API.)

use std::io;
use std::sync::Arc;

use super::packet::Checksum;

#[derive(Debug, thiserror::Error)]
pub enum TunError {
    #[error("cannot create TUN device {name}: {source} (is /dev/net/tun present and do we have CAP_NET_ADMIN?)")]
    Create {
        name: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("TUN device {name} has no interface index: {source}")]
    Index {
        name: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// One queue of the device. Reads and writes take `&self`: several tasks may write.
pub struct TunQueue {
    inner: tokio_tun::Tun,
}

/// What a read delivered: the packet is `buf[..len]`.
#[derive(Debug, Clone, Copy)]
pub struct Received {
    pub len: usize,
    pub checksum: Checksum,
}

impl TunQueue {
    /// Wait for a packet.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<Received> {
        let len = self.inner.recv(buf).await?;
        Ok(Received {
            len,
            checksum: Checksum::Full,
        })
    }

    /// A packet if one is ready now (for draining a batch per wake-up).
    pub fn try_recv(&self, buf: &mut [u8]) -> io::Result<Received> {
        let len = self.inner.try_recv(buf)?;
        Ok(Received {
            len,
            checksum: Checksum::Full,
        })
    }

    /// Write one packet whose checksums are as `checksum` says.
    pub async fn send(&self, packet: &[u8], checksum: Checksum) -> io::Result<()> {
        debug_assert_eq!(
            checksum,
            Checksum::Full,
            "this queue has no virtio-net header"
        );
        match self.inner.try_send(packet) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.inner.send(packet).await.map(|_| ())
            }
            Err(e) => Err(e),
        }
    }
}

/// The device: its name, index and queues. Dropping the last queue removes the device.
pub struct TunDevice {
    pub name: String,
    pub index: u32,
    pub queues: Vec<Arc<TunQueue>>,
    /// True when the queues carry a virtio-net header (offloads on).
    pub offload: bool,
}

impl TunDevice {
    /// Create the device `name` with `queues` queues (1 = single queue).
    pub fn open(name: &str, queues: usize) -> Result<TunDevice, TunError> {
        let tuns = tokio_tun::Tun::builder()
            .name(name)
            .queues(queues.max(1))
            .build()
            .map_err(|e| TunError::Create {
                name: name.to_string(),
                source: e.to_string().into(),
            })?;
        let index = tuns
            .first()
            .ok_or_else(|| TunError::Index {
                name: name.to_string(),
                source: "no queue opened".into(),
            })?
            .index()
            .map_err(|e| TunError::Index {
                name: name.to_string(),
                source: e.to_string().into(),
            })?;
        let queues = tuns
            .into_iter()
            .map(|inner| Arc::new(TunQueue { inner }))
            .collect();
        Ok(TunDevice {
            name: name.to_string(),
            index,
            queues,
            offload: false,
        })
    }
}

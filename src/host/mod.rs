//! Host setup: the TUN device's addresses, link state and routes (rtnetlink), forwarding.

//! The SFU's media plane on the sans-IO `rtc` core, built bottom-up (issue 17): datagrams in
//! batches ([`batch`]), many connections on one socket ([`demux`]) and their timers in one
//! heap ([`timers`]), driven by a thread per socket ([`plane`]).

pub mod batch;
pub mod demux;
pub mod plane;
pub mod timers;

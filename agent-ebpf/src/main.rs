//! Sluice's kernel side: decide, at connect() time, which TCP connections belong to the agent.
//!
//! Failure behaviour: a connection that matches a target is always redirected, even when its
//! metadata could not be stored; the agent refuses connections it cannot attribute. Every such
//! failure is counted in `STATS`.
#![no_std]
#![no_main]

mod connect;
mod maps;
mod relay;
mod release;
mod sockops;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

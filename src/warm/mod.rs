//! `cuttle warm`: fetch every artifact a set of lockfiles pins through a running cuttle.

pub mod gosum;
pub mod integrity;
pub mod lockfile;

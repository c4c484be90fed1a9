//! Registry mirror routes (`http://cuttle:3128/<mirror>/...`): for now the URL rewriting the
//! routes will apply to registry metadata so clients fetch everything next through the
//! mirror ([`rewrite`]).

pub mod rewrite;

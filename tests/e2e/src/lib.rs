//! End-to-end tests live in `tests/`: they run the real compiled components (built by
//! `make build`) under the project's Spin-compatible runner, against a real
//! `redis-server` and the dev mail API, over loopback HTTP.

//! Starts the real `corecast` binary for black-box tests.

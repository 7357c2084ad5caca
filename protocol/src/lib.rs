//! corecast-protocol: sans-io codecs.

//! Tests of the embedded replica.

"""What was used: metering streams, tokenizer counts and estimates, the crash journal, the ledger
that writes usage events, the rollup and retention jobs, and the usage reports."""

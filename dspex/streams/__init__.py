"""The Faust application: channels, wire records, agents and the client SDK."""

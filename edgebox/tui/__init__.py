"""`edgebox top`: a Textual fleet monitor over snapshots from a FleetSource."""

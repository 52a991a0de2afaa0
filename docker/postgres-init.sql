-- Runs once, when the postgres volume is created: Label Studio keeps its own database next to geocurate's store.
CREATE DATABASE labelstudio;

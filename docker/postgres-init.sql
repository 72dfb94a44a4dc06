-- Runs once, when the postgres service initialises its volume: the two sample
-- targets get databases of their own beside the sync database "exigo".
CREATE DATABASE accounting;
CREATE DATABASE shipping;

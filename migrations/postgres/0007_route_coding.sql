-- A route may say what its calls send under AudioSocket kind 0x10 (auto, slin, ulaw,
-- alaw); NULL means the gateway's audiosocket.uplink_coding.
ALTER TABLE routes ADD COLUMN coding TEXT;

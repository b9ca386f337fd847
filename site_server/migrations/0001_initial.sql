-- The central store of a site: identities, their faces, and the change log edges pull.

-- One site serves one embedding model: name, version, dim, and per precision the SHA-256 of
-- the network that enrolled (the first recorded is the only one accepted).
CREATE TABLE site_meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);

CREATE TABLE identities (
    id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name    text NOT NULL UNIQUE,
    created timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE faces (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    uid            uuid NOT NULL UNIQUE,          -- the face's name on every replica
    identity_id    bigint NOT NULL REFERENCES identities(id) ON DELETE CASCADE,
    vector         bytea NOT NULL,                -- float32 little-endian, dim * 4 bytes
    sigma_sq       bytea NULL,                    -- PFE variance, same layout
    quality        double precision NULL,
    network_sha256 text NOT NULL,                 -- the network (graph) that computed it
    precision      text NOT NULL,
    source         text NULL,                     -- where it came from (an image, a kiosk); never replicated
    origin         text NOT NULL,                 -- who enrolled it: 'admin:<token name>' or 'device:<token name>'
    created        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX faces_identity ON faces(identity_id);

-- The change log. Versions are handed out under the row lock of log_head, so they are
-- gap-free when assigned and committed in order: a reader that sees version v sees every
-- version below it. An 'add' entry goes with its face (ON DELETE CASCADE): forgetting a
-- person deletes their faces and so their add entries; only the 'remove' entry stays.
CREATE TABLE log_head (
    one     boolean PRIMARY KEY DEFAULT true CHECK (one),
    version bigint NOT NULL
);
INSERT INTO log_head(version) VALUES (0);

CREATE TABLE changes (
    version  bigint PRIMARY KEY,
    op       text NOT NULL CHECK (op IN ('add', 'remove')),
    identity text NOT NULL,
    face_id  bigint NULL REFERENCES faces(id) ON DELETE CASCADE,
    at       timestamptz NOT NULL DEFAULT now(),
    CHECK ((op = 'add') = (face_id IS NOT NULL))
);
CREATE INDEX changes_face ON changes(face_id);
-- "was this name removed after version v?" (the conflict rule for a kiosk's offline enrolment)
CREATE INDEX changes_removals ON changes(identity, version) WHERE op = 'remove';

-- API tokens: only the SHA-256 of each is stored.
CREATE TABLE tokens (
    id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name     text NOT NULL UNIQUE,
    scope    text NOT NULL CHECK (scope IN ('admin', 'device', 'kiosk')),
    sha256   bytea NOT NULL UNIQUE CHECK (length(sha256) = 32),
    created  timestamptz NOT NULL DEFAULT now(),
    revoked  timestamptz NULL
);

-- What doors report (a decision, an alarm): an audit trail, not replicated.
CREATE TABLE events (
    id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device   text NOT NULL,
    at       timestamptz NOT NULL,
    kind     text NOT NULL,
    identity text NULL,
    detail   jsonb NOT NULL DEFAULT '{}',
    received timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX events_at ON events(at);

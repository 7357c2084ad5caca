//! Per-shard indexes: rooms (member lists), client-chosen keys, and mids
//! (an intrusive doubly linked list through the connections). Kept exact
//! through joins, room changes and closes; sizes are reported so tests can
//! prove nothing leaks.

use std::sync::Arc;

use ahash::AHashMap;

pub const NIL: u32 = u32::MAX;

/// One room's members on this shard.
pub struct Room {
    pub name: Arc<str>,
    /// Slab keys of the members; a member stores its position for O(1)
    /// removal (swap_remove).
    pub members: Vec<u32>,
    pub ws: u32,
    pub tcp: u32,
}

#[derive(Default)]
pub struct Rooms {
    by_name: AHashMap<Arc<str>, u32>,
    rooms: Vec<Room>,
    free: Vec<u32>,
    members: usize,
}

#[allow(clippy::len_without_is_empty)]
impl Rooms {
    /// Adds `key` to the room named `name`; returns `(room id, position)`.
    pub fn join(&mut self, name: &str, key: u32, ws: bool) -> (u32, u32) {
        let id = match self.by_name.get(name) {
            Some(&id) => id,
            None => {
                let name: Arc<str> = Arc::from(name);
                let room = Room {
                    name: name.clone(),
                    members: Vec::new(),
                    ws: 0,
                    tcp: 0,
                };
                let id = match self.free.pop() {
                    Some(id) => {
                        self.rooms[id as usize] = room;
                        id
                    }
                    None => {
                        self.rooms.push(room);
                        (self.rooms.len() - 1) as u32
                    }
                };
                self.by_name.insert(name, id);
                id
            }
        };
        let r = &mut self.rooms[id as usize];
        r.members.push(key);
        if ws {
            r.ws += 1;
        } else {
            r.tcp += 1;
        }
        self.members += 1;
        (id, (r.members.len() - 1) as u32)
    }

    /// Removes the member at `pos` of room `id`. Returns the slab key of the
    /// member moved into `pos` (whose stored position must become `pos`).
    pub fn leave(&mut self, id: u32, pos: u32, ws: bool) -> Option<u32> {
        let r = &mut self.rooms[id as usize];
        r.members.swap_remove(pos as usize);
        if ws {
            r.ws -= 1;
        } else {
            r.tcp -= 1;
        }
        self.members -= 1;
        if r.members.is_empty() {
            self.by_name.remove(&r.name);
            r.members = Vec::new();
            self.free.push(id);
            return None;
        }
        if r.members.len() > 16 && r.members.capacity() > 4 * r.members.len() {
            r.members.shrink_to_fit();
        }
        r.members.get(pos as usize).copied()
    }

    pub fn get(&self, id: u32) -> &Room {
        &self.rooms[id as usize]
    }

    pub fn id_of(&self, name: &str) -> Option<u32> {
        self.by_name.get(name).copied()
    }

    /// Live rooms (with members).
    pub fn iter(&self) -> impl Iterator<Item = &Room> {
        self.by_name.values().map(|&id| &self.rooms[id as usize])
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn member_count(&self) -> usize {
        self.members
    }
}

/// Client-chosen connection keys (server-assigned keys are decoded, not
/// stored: see `Shard::conn_by_key`).
#[derive(Default)]
pub struct Keys {
    map: AHashMap<Box<str>, u32>,
}

#[allow(clippy::len_without_is_empty)]
impl Keys {
    pub fn insert(&mut self, key: &str, conn: u32) {
        self.map.insert(key.into(), conn);
    }

    /// Removes `key` if it still maps to `conn` (a later connection with the
    /// same key owns it otherwise).
    pub fn remove(&mut self, key: &str, conn: u32) {
        if self.map.get(key) == Some(&conn) {
            self.map.remove(key);
        }
    }

    pub fn get(&self, key: &str) -> Option<u32> {
        self.map.get(key).copied()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }
}

/// Head of each mid's list of connections (linked through `Conn::mid_prev`
/// / `mid_next`).
#[derive(Default)]
pub struct Mids {
    pub heads: AHashMap<i64, u32>,
}

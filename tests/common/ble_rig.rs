//! A BLE test rig: the devcloud, the fake BlueZ on a private bus, and the real `tetherd`
//! with `DBUS_SYSTEM_BUS_ADDRESS` in its environment only (libdbus reads it once per
//! process; the test process itself never talks D-Bus).
//!
//! Include with `mod common; #[path = "common/bluez.rs"] mod bluez;
//! #[path = "common/ble_rig.rs"] mod ble_rig;`.
#![allow(dead_code)]

use serde_json::{Value, json};

use crate::bluez::FakeBluez;
use crate::common::{DevCloud, TempDir, Tetherd, add_cloud_keys, config};

pub const SERVICE: &str = "7e7e0001-0000-4000-8000-00000000beef";
pub const COMMAND: &str = "7e7e0002-0000-4000-8000-00000000beef";
pub const RESULT: &str = "7e7e0003-0000-4000-8000-00000000beef";

/// One `[[appliance]]` table for a BLE appliance at `address`, plus `extra` keys.
pub fn ble_appliance(id: &str, address: &str, extra: &str) -> String {
    format!(
        "\n[[appliance]]\nid = \"{id}\"\ntransport = \"ble\"\naddress = \"{address}\"\nservice = \"{SERVICE}\"\ncommand_char = \"{COMMAND}\"\nresult_char = \"{RESULT}\"\n{extra}"
    )
}

/// Fields in drop order: the daemon is stopped first, then the fake, then the cloud, and
/// the directory goes last.
pub struct BleRig {
    pub daemon: Tetherd,
    pub fake: FakeBluez,
    pub cloud: DevCloud,
    pub dir: TempDir,
}

impl BleRig {
    /// Starts the cloud and the fake, lets `setup` prepare the fake (devices, behaviour),
    /// then starts the daemon with `mqtt` appliances and the `extra` TOML (BLE appliances,
    /// `[ble]`, groups).
    pub fn start(tag: &str, mqtt: &[&str], extra: &str, setup: impl FnOnce(&FakeBluez)) -> BleRig {
        BleRig::start_with(tag, mqtt, extra, "", setup)
    }

    /// Like [`BleRig::start`], with `cloud_keys` added to the `[cloud]` section.
    pub fn start_with(
        tag: &str,
        mqtt: &[&str],
        extra: &str,
        cloud_keys: &str,
        setup: impl FnOnce(&FakeBluez),
    ) -> BleRig {
        let dir = TempDir::new(tag);
        let cloud = DevCloud::start(dir.path(), &[]);
        let fake = FakeBluez::start(&dir.path().join("bluez"));
        setup(&fake);
        let cfg = config(dir.path(), &cloud, mqtt, extra);
        add_cloud_keys(&cfg, cloud_keys);
        let daemon =
            Tetherd::start_with_env(&cfg, &[("DBUS_SYSTEM_BUS_ADDRESS", fake.bus_address())]);
        BleRig {
            daemon,
            fake,
            cloud,
            dir,
        }
    }

    /// Adds a device to the fake with the rig's GATT layout and the given behaviour.
    pub fn add_device(fake: &FakeBluez, address: &str, behaviour: Value) {
        fake.add_device(address, "", SERVICE, COMMAND, RESULT, behaviour);
    }

    /// Sends one command through the cloud and waits for its stored result.
    pub async fn run(&self, cmd: Value) -> Value {
        let id = self.cloud.enqueue(cmd).await;
        let stored = self.cloud.result(&id).await;
        stored["result"].clone()
    }

    /// The writes the fake recorded for `address`, as hex strings, in order.
    pub async fn writes(&self, address: &str) -> Vec<String> {
        let stats = self.fake.control_async(json!({"op": "stats"})).await;
        stats["writes"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|w| w["address"] == address)
            .map(|w| w["hex"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    pub async fn stats(&self) -> Value {
        self.fake.control_async(json!({"op": "stats"})).await
    }

    /// Waits (in the fake) until a condition holds; panics if it does not.
    pub async fn wait_fake(&self, mut condition: Value) {
        condition["op"] = json!("wait");
        condition["timeout_ms"] = json!(20_000);
        let answer = self.fake.control_async(condition.clone()).await;
        assert_eq!(answer["ok"], json!(true), "fake wait {condition}: {answer}");
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

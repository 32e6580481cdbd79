//! `tidewatch-sensor enroll`: the sensor's key, born here, and the CSR
//! the shore signs.

use tidewatch_sensor::identity;

use super::EnrollArgs;

pub fn main(args: EnrollArgs) -> anyhow::Result<()> {
    identity::enroll(&args.key, &args.csr, args.force)?;
    println!(
        "private key: {}  (mode 0600; stays on this sensor)\n\
         request:     {}  (send it ashore; the CA signs it with\n\
         \x20            tidewatch-collector pki sign --csr {} --id SENSOR_ID --vessel VESSEL)\n\
         then: tidewatch-sensor run --cert SENSOR_ID.pem --key {} --ca ca.pem ...",
        args.key.display(),
        args.csr.display(),
        args.csr.file_name().unwrap_or_default().to_string_lossy(),
        args.key.display(),
    );
    Ok(())
}

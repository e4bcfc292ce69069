// DICOM recognised by content as the CLI does: a 128-byte preamble + "DICM", or a data set
// without a preamble that parses with the identifying UIDs in it; the header read with the
// maintained dicom-parser (only the first bytes: never the pixel data).
import dicomParser from "dicom-parser";

// Most headers end within a few KB: read 16 KB, and 256 KB for a file whose UIDs were not in it.
const HEAD_BYTES = 16 * 1024;
const LONG_HEAD_BYTES = 256 * 1024;
const DICOMDIR_CLASS = "1.2.840.10008.1.3.10";

function parse(bytes) {
  const options = { untilTag: "x7fe00010" };
  try {
    return dicomParser.parseDicom(bytes, options);
  } catch (error) {
    // A header cut at the end of the read slice still holds the elements before the cut.
    if (error && error.dataSet) return error.dataSet;
    throw error;
  }
}

function rawDataSet(bytes) {
  const byteArray = bytes;
  const dataSet = new dicomParser.DataSet(dicomParser.littleEndianByteArrayParser, byteArray, {});
  const stream = new dicomParser.ByteStream(dicomParser.littleEndianByteArrayParser, byteArray, 0);
  try {
    dicomParser.parseDicomDataSetImplicit(dataSet, stream, byteArray.length, { untilTag: "x7fe00010" });
  } catch (error) { /* a partial header is fine when the UIDs came before the cut */ }
  return dataSet;
}

export async function readHeader(file) {
  const first = await readHeaderOf(file, HEAD_BYTES);
  if (first.partial && file.size > HEAD_BYTES) return readHeaderOf(file, LONG_HEAD_BYTES);
  delete first.partial;
  return first;
}

async function readHeaderOf(file, bytes) {
  const head = new Uint8Array(await file.slice(0, bytes).arrayBuffer());
  const preamble = head.length >= 132 && head[128] === 0x44 && head[129] === 0x49
    && head[130] === 0x43 && head[131] === 0x4d;
  let dataSet;
  try {
    dataSet = preamble ? parse(head) : rawDataSet(head);
  } catch (error) {
    if (file.size > bytes) return { partial: true }; // cut inside an element: read further
    return { skipped: preamble ? "DICOM header cannot be read" : "not a DICOM file" };
  }
  const text = (tag) => (dataSet.string(tag) || "").trim();
  const study = text("x0020000d");
  const sop = text("x00080018");
  if ((!study || !sop) && file.size > bytes) return { partial: true };
  if (!preamble && (!study || !sop)) return { skipped: "not a DICOM file" };
  if (text("x00020002") === DICOMDIR_CLASS) return { skipped: "DICOMDIR (a media index, not an image)" };
  return {
    patientId: text("x00100020"),
    patientName: text("x00100010"),
    study: study || "(no StudyInstanceUID)",
    series: text("x0020000e") || "(no SeriesInstanceUID)",
    sop,
    modality: text("x00080060"),
    studyDate: text("x00080020"),
    description: text("x00081030"),
  };
}

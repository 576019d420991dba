// An Android Activity's calls into the fmrl runtime (package dev.fmrl). A snippet, NOT built or run in this
// repository (there is no Android SDK here): see README.md beside it for what the app needs.
package com.example.fmrl;

import android.app.Activity;
import android.content.res.AssetFileDescriptor;
import android.os.Bundle;
import android.util.Log;
import dev.fmrl.FmrlException;
import dev.fmrl.Recommendations;
import dev.fmrl.Recommender;
import dev.fmrl.Session;
import java.io.File;
import java.io.FileNotFoundException;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.nio.file.Files;

public class RecommendActivity extends Activity {
  private static final String TAG = "fmrl";
  private static final String BUNDLE_ASSET = "phone-lowmem.fmrlb";  // a one-file bundle in assets/

  // One Recommender per process in a real app (e.g. held by the Application); it is thread-safe.
  private Recommender recommender;
  // One Session per user; not thread-safe: use it from one thread (here: the UI thread).
  private Session session;

  @Override
  protected void onCreate(Bundle saved) {
    super.onCreate(saved);
    try {
      recommender = openBundle();
      File state = stateFile();
      session = state.exists() ? restoreOrNew(Files.readAllBytes(state.toPath())) : recommender.newSession();
    } catch (FmrlException | IOException e) {
      Log.e(TAG, "cannot start the recommender", e);  // FmrlException: e.status() and the library's reason
    }
  }

  /** Opens the bundle in place from the APK when the asset is stored uncompressed, else from a copy. */
  private Recommender openBundle() throws FmrlException, IOException {
    try (AssetFileDescriptor afd = getAssets().openFd(BUNDLE_ASSET)) {
      // The asset's bytes at [start, start + length) of the APK file: mapped read-only, not copied
      // (when the offset is 64-byte aligned). The library does not keep the fd.
      return Recommender.openFd(afd.getParcelFileDescriptor().getFd(), afd.getStartOffset(), afd.getLength());
    } catch (FileNotFoundException compressed) {
      // openFd refuses compressed assets: copy the asset to a file once, then open the file.
      File copy = new File(getFilesDir(), BUNDLE_ASSET);
      if (!copy.exists()) {
        File partial = new File(getFilesDir(), BUNDLE_ASSET + ".part");
        try (InputStream in = getAssets().open(BUNDLE_ASSET); OutputStream out = new FileOutputStream(partial)) {
          byte[] buffer = new byte[1 << 16];
          for (int n; (n = in.read(buffer)) > 0; ) out.write(buffer, 0, n);
        }
        if (!partial.renameTo(copy)) throw new IOException("cannot rename " + partial);
      }
      return Recommender.open(copy.getPath());
    }
  }

  /** A saved session, or a new one when it was refused (e.g. the app shipped a new bundle). */
  private Session restoreOrNew(byte[] state) throws FmrlException {
    try {
      return recommender.restore(state);
    } catch (FmrlException refused) {
      Log.w(TAG, "saved session refused (" + refused.status() + "): " + refused.getMessage());
      return recommender.newSession();
    }
  }

  /** Called when the user opens an item: feed it, then show the best 10 not seen yet. */
  void onItemOpened(String itemId) {
    try {
      session.observe(itemId);  // false: an item the bundle does not know (skipped)
      Recommendations top = session.recommend(10, true);
      for (int i = 0; i < top.size(); i++) Log.i(TAG, (i + 1) + ". " + top.id(i) + " " + top.score(i));
    } catch (FmrlException e) {
      Log.e(TAG, "recommend failed", e);
    }
  }

  @Override
  protected void onPause() {
    super.onPause();
    if (session == null) return;
    try {  // save the session (a few KB): write a temporary file, then rename over the old one
      File state = stateFile(), partial = new File(state.getPath() + ".part");
      Files.write(partial.toPath(), session.toBytes());
      if (!partial.renameTo(state)) Log.w(TAG, "cannot save " + state);
    } catch (FmrlException | IOException e) {
      Log.e(TAG, "cannot save the session", e);
    }
  }

  @Override
  protected void onDestroy() {
    if (session != null) session.close();  // sessions first, then the recommender
    if (recommender != null) recommender.close();
    super.onDestroy();
  }

  private File stateFile() {
    return new File(getFilesDir(), "fmrl-session.bin");
  }
}
